"""Static-shape token gathering and merging, and ToMe's bipartite soft matching (Bolya et al., 2023).

Everything here keeps shapes fixed for a given input length: counts are Python ints, selection is ``topk``
with a constant k and a row gather (ONNX TopK / Gather), and merging is a one-hot matrix product
(Equal, Cast, MatMul) rather than a scatter, all of which TVM 0.27's Relax ONNX importer takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i], :]`` for (B, N, C) ``x`` and (B, K) ``index``.

    A row lookup in the (B * N, C) view (``F.embedding``): it exports to one ONNX Gather of whole rows (plus the
    view, and the batch offsets when B > 1) instead of an index expanded to (B, K, C) and a GatherElements."""
    b, n, c = x.shape
    rows = index if b == 1 else index + torch.arange(b, device=index.device).unsqueeze(1) * n
    return F.embedding(rows, x.reshape(b * n, c))


def merge_into(dst: torch.Tensor, src: torch.Tensor, target: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Average each source token into its destination: (B, M, C) ``dst``, (B, R, C) ``src``, (B, R) ``target``
    indices into ``dst[:, offset:]``. Every token weighs one; a destination that receives k sources becomes
    their mean with itself. (The one-hot is built destination-major and the offset folded into the constant
    slots, so no transpose or index shift is exported.)"""
    slots = (torch.arange(dst.shape[1], device=dst.device) - offset).unsqueeze(-1)  # (M, 1)
    onehot = (slots == target.unsqueeze(1)).to(dst.dtype)  # (B, M, R)
    return (dst + onehot @ src) / (1.0 + onehot.sum(-1, keepdim=True))


def head_mean(t: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) per-head features -> (B, N, D), their mean over heads, as one product with a constant
    1/H row: ONNX Runtime took 8 us for the ReduceMean over the head axis on the CIFAR ViT's keys, 1.4 us for
    this."""
    b, h, n, d = t.shape
    weights = torch.full((1, 1, h), 1.0 / h, dtype=t.dtype, device=t.device)
    return (weights @ t.reshape(b, h, n * d)).reshape(b, n, d)


def normalized(metric: torch.Tensor) -> torch.Tensor:
    """Unit-length rows, so a matrix product gives cosine similarities."""
    return metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def bipartite_merge(x: torch.Tensor, metric: torch.Tensor, remove: int) -> torch.Tensor:
    """ToMe: merge ``remove`` patch tokens of (B, N, C) ``x`` away; the class token (index 0) stays first.

    Patch tokens alternate into sets A (1, 3, 5, ...) and B (2, 4, ...); each A token's most similar B token
    (cosine of ``metric``, (B, N, D)) is its match, and the ``remove`` A tokens with the best matches are
    averaged into them. ``remove`` must be at most the size of A.
    """
    if remove <= 0:
        return x
    cls, patches, m = x[:, :1], x[:, 1:], normalized(metric[:, 1:])
    a, b = patches[:, 0::2], patches[:, 1::2]
    ma, mb = m[:, 0::2], m[:, 1::2]
    if remove > a.shape[1]:
        raise ValueError(
            f"token merging removes at most {a.shape[1]} of {patches.shape[1]} patch tokens in one block; asked {remove}"
        )
    best, match = (ma @ mb.transpose(1, 2)).max(dim=-1)
    order = torch.topk(best, a.shape[1], dim=1).indices
    src, unmerged = order[:, :remove], order[:, remove:]
    b = merge_into(b, gather_tokens(a, src), torch.gather(match, 1, src))
    return torch.cat([cls, gather_tokens(a, unmerged), b], dim=1)
