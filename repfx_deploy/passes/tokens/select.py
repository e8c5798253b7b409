"""Zero-TPrune's removal of R tokens: importance partition, then similarity (Wang et al., CVPR 2024).

The patch tokens are ranked by importance (``importance.py``). The ``pool`` least important are candidates;
the others are surely kept. Of the candidates, the R whose most similar surely-kept token is closest
(cosine of attention keys) are redundant and removed: dropped, or averaged into that token. With
``pool == R`` this is pure importance pruning. The class token (index 0) is never a candidate and stays first.
Shapes are static: every count is a Python int fixed when the block is built.
"""

from __future__ import annotations

import torch

from repfx_deploy.passes.tokens.merge import gather_tokens, merge_into, normalized


def candidate_pool(patches: int, remove: int, factor: float) -> int:
    """How many of the least important patch tokens compete for removal: ``factor`` x ``remove``, leaving at
    least one surely-kept token to compare against."""
    return max(remove, min(patches - 1, int(round(factor * remove))))


def zero_tprune(
    x: torch.Tensor, metric: torch.Tensor, importance: torch.Tensor, remove: int, factor: float, reduction: str
) -> torch.Tensor:
    """Remove ``remove`` patch tokens from (B, N, C) ``x``; ``metric`` (B, N, D) measures similarity and
    ``importance`` (B, N) ranks the tokens. ``reduction`` is "drop" or "merge".

    Output order: the class token, the surely-kept tokens (most important first, each the mean of itself and
    the tokens merged into it), then the spared candidates (most redundant first).

    Written for few exported operators, since at ViT sizes each costs about as much as its arithmetic: one
    gather of the normalized keys in importance order serves both sides of the similarity, the candidates are
    reordered by redundancy once (not gathered twice), and one gather of ``x`` fetches every token the output
    needs (kept and merged). ``tests/passes/tokens/test_reduce.py`` checks it against the direct form
    (separate gathers per set, a concatenation after the merge).
    """
    if remove <= 0:
        return x
    patches = x.shape[1] - 1
    if remove >= patches:
        raise ValueError(
            f"cannot remove {remove} of {patches} patch tokens and keep one (keep=1 computes the class token alone)"
        )
    pool = candidate_pool(patches, remove, factor)
    sure_n = patches - pool
    order = torch.topk(importance[:, 1:], patches, dim=1).indices + 1  # most important first, class token excluded
    cls = torch.zeros_like(order[:, :1])
    if pool == remove and reduction == "drop":  # pure importance pruning: similarity decides nothing
        return gather_tokens(x, torch.cat([cls, order[:, :sure_n]], dim=1))
    m = gather_tokens(normalized(metric), order)
    best, match = (m[:, sure_n:] @ m[:, :sure_n].transpose(1, 2)).max(dim=-1)
    candidates = order[:, sure_n:]
    if pool > remove:  # the most redundant candidates go; reorder once so they come first
        by_redundancy = torch.topk(best, pool, dim=1).indices
        candidates = torch.gather(candidates, 1, by_redundancy)
        match = torch.gather(match, 1, by_redundancy)
    if reduction == "drop":
        return gather_tokens(x, torch.cat([cls, order[:, :sure_n], candidates[:, remove:]], dim=1))
    # one gather in the order [class, sure..., spared..., gone...]: the first rows are the output once the
    # gone rows are averaged into the sure ones (no concatenation after the merge)
    kept_n = 1 + patches - remove
    rows = gather_tokens(x, torch.cat([cls, order[:, :sure_n], candidates[:, remove:], candidates[:, :remove]], dim=1))
    return merge_into(rows[:, :kept_n], rows[:, kept_n:], match[:, :remove], offset=1)
