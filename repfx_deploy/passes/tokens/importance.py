"""Token importance as a weighted PageRank over the attention graph (Zero-TPrune's I-stage).

Token j's importance is the attention it receives, weighted by the importance of the tokens that attend to
it: ``s <- s A`` (A rows are queries, summing to one), from the uniform start, a few times. Each head gives
one score vector; heads are then aggregated.
"""

from __future__ import annotations

import torch


def pagerank_importance(probs: torch.Tensor, iterations: int, aggregation: str = "rms", start: str = "uniform") -> torch.Tensor:
    """(B, H, N, N) attention probabilities -> (B, N) token importance.

    ``start`` "uniform" is Zero-TPrune's start (every token equally important); "cls" starts from the class
    token alone (personalised PageRank: the first step is the class token's attention row, what EViT ranks by),
    so importance flows from what the classifier reads.

    ``aggregation`` "mean" averages the heads' scores; "rms" takes their root mean square, which lets a head
    that concentrates on few tokens weigh more than one that spreads evenly (every head's scores sum to one).
    """
    n = probs.shape[-1]
    if start == "cls":
        s = probs[:, :, :1, :]  # one step from the class token: its attention row
        iterations -= 1
    else:
        s = torch.full_like(probs[:, :, :1, :], 1.0 / n)  # (B, H, 1, N)
    for _ in range(iterations):
        s = s @ probs
    s = s.squeeze(2)
    if aggregation == "rms":
        return (s * s).mean(dim=1).sqrt()
    return s.mean(dim=1)
