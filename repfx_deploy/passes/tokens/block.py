"""A transformer block that computes its attention explicitly and removes tokens before its MLP.

Fused attention kernels (``nn.MultiheadAttention``'s fast path, SDPA) return no attention weights, and
Zero-TPrune ranks tokens by them, so the patched block recomputes ``softmax(q k^T * scale) v`` from the
block's own projection weights. Subclasses in ``adapters.py`` say where each encoder family keeps its
projections, norms and MLP; they take over the original block's child modules under the same names, so
the state_dict is unchanged.

``keep`` (an int fixed before export, or None for all) is how many tokens leave the block; tokens are
removed after the attention residual and before the MLP, where the MLP's cost is saved (the order ToMe and
Zero-TPrune use). ``keep == 1`` computes the class token alone after attention: its query row only, the
output projection and MLP for one token. The patched block is for inference: dropout and drop-path are not
applied (the pass is zero-shot; nothing trains through it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from repfx_deploy.passes.tokens.importance import pagerank_importance
from repfx_deploy.passes.tokens.merge import bipartite_merge, head_mean
from repfx_deploy.passes.tokens.select import zero_tprune


class TokenReducedBlock(nn.Module):
    """Base class: the block's computation with explicit attention, then token removal.

    Subclasses implement ``_project_qkv`` (-> q, k, v as (B, N, C)), ``_project_out``, ``_norm1``, ``_norm2``,
    ``_mlp``, and may override ``_scale1``/``_scale2`` (LayerScale). ``pre_norm`` selects
    ``x + attn(norm1(x))`` (pre-norm) or ``norm1(x + attn(x))`` (post-norm).
    """

    family = "?"

    def __init__(
        self,
        layer: nn.Module,
        *,
        num_heads: int,
        scale: float,
        pre_norm: bool,
        batch_first: bool = True,
        returns_tuple: bool = False,
    ) -> None:
        super().__init__()
        for name, child in layer.named_children():
            self.add_module(name, child)
        self.num_heads = num_heads
        self.scale = scale
        self.pre_norm = pre_norm
        self.batch_first = batch_first
        self.returns_tuple = returns_tuple
        self.keep: int | None = None
        self.method = "zero-tprune"
        self.pagerank_iterations = 5
        self.head_aggregation = "mean"
        self.pagerank_start = "uniform"
        self.candidate_factor = 2.0
        self.reduction = "merge"

    def configure(self, config) -> None:
        """Set how removed tokens are chosen from a ``TokensConfig`` (its fields of the same names)."""
        for name in (
            "method",
            "pagerank_iterations",
            "head_aggregation",
            "pagerank_start",
            "candidate_factor",
            "reduction",
        ):
            setattr(self, name, getattr(config, name))

    # family hooks ---------------------------------------------------------------------------------------
    def _project_qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _project_out(self, o: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _norm1(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _norm2(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _scale1(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _scale2(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    # shared computation ---------------------------------------------------------------------------------
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, torch.Tensor):
                raise ValueError(
                    f"{type(self).__name__}: attention masks are not supported by token reduction (got a tensor argument); "
                    "call the model without a mask"
                )
        if not self.batch_first:
            x = x.transpose(0, 1)
        out = self._block(x)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out,) if self.returns_tuple else out

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        keep = n if self.keep is None or self.keep >= n else self.keep
        h = self._norm1(x) if self.pre_norm else x
        q, k, v = (self._heads(t) for t in self._project_qkv(h))
        q, k = self._qk_norm(q, k)
        if keep == 1:  # only the class token goes on: its query row is all that is needed
            q, x = q[:, :, :1], x[:, :1]
        probs = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        attn = self._project_out((probs @ v).transpose(1, 2).reshape(b, q.shape[2], c))
        x = x + self._scale1(attn)
        if not self.pre_norm:
            x = self._norm1(x)
        if 1 < keep < n:
            x = self._reduce(x, probs, k, n - keep)
        if self.pre_norm:
            return x + self._scale2(self._mlp(self._norm2(x)))
        return self._norm2(x + self._mlp(x))

    def _reduce(self, x: torch.Tensor, probs: torch.Tensor, k: torch.Tensor, remove: int) -> torch.Tensor:
        metric = head_mean(k)  # the keys averaged over heads: ToMe's similarity features
        if self.method == "merge":
            return bipartite_merge(x, metric, remove)
        importance = pagerank_importance(probs, self.pagerank_iterations, self.head_aggregation, self.pagerank_start)
        return zero_tprune(x, metric, importance, remove, self.candidate_factor, self.reduction)

    def extra_repr(self) -> str:
        return f"family={self.family}, keep={self.keep}, method={self.method}, heads={self.num_heads}, pre_norm={self.pre_norm}"
