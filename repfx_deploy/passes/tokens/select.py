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


def zero_tprune(x: torch.Tensor, metric: torch.Tensor, importance: torch.Tensor, remove: int, factor: float, reduction: str) -> torch.Tensor:
    """Remove ``remove`` patch tokens from (B, N, C) ``x``; ``metric`` (B, N, D) measures similarity and
    ``importance`` (B, N) ranks the tokens. ``reduction`` is "drop" or "merge"."""
    if remove <= 0:
        return x
    patches = x.shape[1] - 1
    if remove >= patches:
        raise ValueError(f"cannot remove {remove} of {patches} patch tokens and keep one (keep=1 computes the class token alone)")
    pool = candidate_pool(patches, remove, factor)
    order = torch.topk(importance[:, 1:], patches, dim=1).indices + 1  # most important first, class token excluded
    sure, candidates = order[:, : patches - pool], order[:, patches - pool :]
    if pool == remove and reduction == "drop":  # pure importance pruning: similarity decides nothing
        return torch.cat([x[:, :1], gather_tokens(x, sure)], dim=1)
    m = normalized(metric)
    m_sure = gather_tokens(m, sure)
    best, match = (gather_tokens(m, candidates) @ m_sure.transpose(1, 2)).max(dim=-1)
    if pool > remove:
        by_redundancy = torch.topk(best, pool, dim=1).indices
        gone, spared = by_redundancy[:, :remove], by_redundancy[:, remove:]
        kept_candidates = gather_tokens(x, torch.gather(candidates, 1, spared))
    else:
        gone = torch.topk(best, pool, dim=1).indices
        kept_candidates = x[:, :0]
    kept_sure = gather_tokens(x, sure)
    if reduction == "merge":
        kept_sure = merge_into(kept_sure, gather_tokens(x, torch.gather(candidates, 1, gone)), torch.gather(match, 1, gone))
    return torch.cat([x[:, :1], kept_sure, kept_candidates], dim=1)
