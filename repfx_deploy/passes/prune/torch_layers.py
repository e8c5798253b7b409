"""Traceable, head-prunable stand-ins for torch's transformer layers.

``nn.TransformerEncoder(Layer)`` cannot be traced by torch.fx (their fast-path checks branch on tensors), and
``nn.MultiheadAttention`` keeps q, k and v in one ``in_proj_weight`` with ``embed_dim`` tied to the model width,
so none of them can lose heads or hidden units in place. ``make_traceable`` swaps them, in a copy the pass owns,
for modules that compute the same function with separate ``q_proj/k_proj/v_proj/out_proj`` linears, which the
attention analysis then prunes by head like any other attention layer. Outputs match the originals to float
rounding; the call signatures are the same, so the parent module's ``forward`` is unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SplitMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (same call and results) with separate projections and a free head count.

    ``num_heads * head_dim`` is the inner width; it no longer has to equal the model width, so whole heads can
    be removed. Masks: ``attn_mask`` of shape (L, S) or (N * num_heads, L, S), bool (True = not allowed) or
    additive float; ``key_padding_mask`` of shape (N, S), likewise.
    """

    # read by nn.TransformerEncoder(Layer) to decide on their fused fast path, which must not run here
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, source: nn.MultiheadAttention) -> None:
        super().__init__()
        dim, heads = source.embed_dim, source.num_heads
        bias = source.in_proj_bias is not None
        self.num_heads = heads
        self.head_dim = dim // heads
        self.batch_first = source.batch_first
        self.dropout = source.dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=bias) for _ in range(3))
        self.out_proj = nn.Linear(dim, dim, bias=source.out_proj.bias is not None)
        with torch.no_grad():
            for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                proj.weight.copy_(source.in_proj_weight[i * dim : (i + 1) * dim])
                if bias:
                    proj.bias.copy_(source.in_proj_bias[i * dim : (i + 1) * dim])
            self.out_proj.load_state_dict(source.out_proj.state_dict())
        self.to(source.out_proj.weight.device, source.out_proj.weight.dtype)

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, q_len, k_len, h, d = query.shape[0], query.shape[1], key.shape[1], self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(n, q_len, h, d).transpose(1, 2)
        k = self.k_proj(key).reshape(n, k_len, h, d).transpose(1, 2)
        v = self.v_proj(value).reshape(n, k_len, h, d).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d))
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(n, h, q_len, k_len)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        weights = scores.softmax(-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(n, q_len, h * d))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


class EncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` (same call and results, pre- or post-norm) without the fused fast path."""

    def __init__(self, source: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        self.self_attn = SplitMultiheadAttention(source.self_attn)
        self.linear1, self.dropout, self.linear2 = source.linear1, source.dropout, source.linear2
        self.norm1, self.norm2 = source.norm1, source.norm2
        self.dropout1, self.dropout2 = source.dropout1, source.dropout2
        self.norm_first = source.norm_first
        self.activation = source.activation

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._attend(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._feed_forward(x))

    def _attend(self, x, mask, padding, is_causal):
        out = self.self_attn(
            x, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=False, is_causal=is_causal
        )[0]
        return self.dropout1(out)

    def _feed_forward(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class Encoder(nn.Module):
    """``nn.TransformerEncoder`` (same call and results) over ``EncoderLayer``s."""

    def __init__(self, source: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(layer) if isinstance(layer, nn.TransformerEncoderLayer) else layer for layer in source.layers
        )
        self.norm = source.norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return self.norm(x) if self.norm is not None else x


def make_traceable(model: nn.Module) -> list[str]:
    """Swap, in place, every ``nn.TransformerEncoder``, ``nn.TransformerEncoderLayer`` and plain
    ``nn.MultiheadAttention`` (same q/k/v width, no ``add_bias_kv``/``add_zero_attn``) for its stand-in;
    returns the names swapped. Others are left as they are (the analysis then keeps them whole)."""
    swapped = []
    for name, child in list(model.named_children()):
        replacement: nn.Module | None = None
        if isinstance(child, nn.TransformerEncoder):
            if all(
                _splittable(layer.self_attn) for layer in child.layers if isinstance(layer, nn.TransformerEncoderLayer)
            ):
                replacement = Encoder(child)
        elif isinstance(child, nn.TransformerEncoderLayer):
            replacement = EncoderLayer(child) if _splittable(child.self_attn) else None
        elif isinstance(child, nn.MultiheadAttention):
            replacement = SplitMultiheadAttention(child) if _splittable(child) else None
        if replacement is not None:
            replacement.train(child.training)
            setattr(model, name, replacement)
            swapped.append(name)
        else:
            swapped += [f"{name}.{n}" for n in make_traceable(child)]
    return swapped


def _splittable(m: nn.MultiheadAttention) -> bool:
    return m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn and m.embed_dim % m.num_heads == 0
