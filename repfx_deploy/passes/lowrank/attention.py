"""Unfuse PyTorch's attention modules so their projections become ordinary ``nn.Linear`` layers.

``nn.MultiheadAttention`` keeps q/k/v in one ``in_proj_weight`` parameter and calls ``out_proj.weight``
directly, and ``nn.TransformerEncoderLayer``'s inference fast path reads ``linear1.weight`` and friends directly
too, so none of them can be replaced by a factorized pair in place. ``unfuse_attention`` rewrites, in place:

- every ``nn.MultiheadAttention`` into ``ExplicitAttention``: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``
  linears and the same arithmetic (scaled dot product, softmax, masks, dropout on the weights while training);
- every ``nn.TransformerEncoderLayer`` into ``ExplicitEncoderLayer``, the same layer with the fast path turned
  off (it always runs its submodules); ``nn.TransformerEncoder`` stops using nested tensors.

The rewritten model computes the same function (float rounding aside). Attention with ``bias_k``/``bias_v`` or
``add_zero_attn`` is left fused (its projections are then not factorized).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ExplicitAttention(nn.Module):
    """Multi-head attention with separate projection linears, called like ``nn.MultiheadAttention``."""

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int, bias: bool, dropout: float, batch_first: bool) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_fused(cls, mha: nn.MultiheadAttention) -> "ExplicitAttention":
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim, bias, mha.dropout, mha.batch_first)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                q, k, v = mha.in_proj_weight.chunk(3, dim=0)
            else:
                q, k, v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for proj, w in ((new.q_proj, q), (new.k_proj, k), (new.v_proj, v)):
                proj.weight.copy_(w)
            if bias:
                for proj, b in zip((new.q_proj, new.k_proj, new.v_proj), mha.in_proj_bias.chunk(3)):
                    proj.bias.copy_(b)
                new.out_proj.bias.copy_(mha.out_proj.bias)
            new.out_proj.weight.copy_(mha.out_proj.weight)
        return new.to(mha.out_proj.weight.device).train(mha.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, _ = query.shape
        lk = key.shape[1]
        q = self.q_proj(query).reshape(n, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).reshape(n, lk, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).reshape(n, lk, self.num_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).tril().logical_not()
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(n, self.num_heads, lq, lk)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(n, lq, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


class ExplicitEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` without its fused inference path: the same computation through its
    submodules, so they can be replaced."""

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


def unfuse_attention(model: nn.Module) -> list[str]:
    """Rewrite ``model``'s fused attention modules in place (see the module docstring); returns the names of
    the modules rewritten, and of those left fused with the reason."""
    done = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.TransformerEncoderLayer) and type(module) is nn.TransformerEncoderLayer:
            module.__class__ = ExplicitEncoderLayer  # same state, forward without the fast path
            done.append(name)
        elif isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    for name, module in list(model.named_modules()):
        if type(module) is nn.MultiheadAttention:
            if module.bias_k is not None or module.add_zero_attn:
                done.append(f"{name} (left fused: bias_k/bias_v or add_zero_attn)")
                continue
            _set_submodule(model, name, ExplicitAttention.from_fused(module))
            done.append(name)
    return done


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
