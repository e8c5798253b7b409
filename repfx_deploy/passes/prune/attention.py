"""Attention layers pruned by whole heads.

A module counts as an attention layer when it has a head count attribute (``num_heads``,
``num_attention_heads``, ``n_heads``, ``n_head``) and its query/key/value projections as ``nn.Linear`` children:
one fused ``qkv`` (rows ``[q; k; v]``, as in timm's ViT) or three (``query/key/value``, ``q/k/v``,
``q_proj/k_proj/v_proj``, as in BERT and Llama-style code), and optionally its output projection (``proj``,
``out_proj``, ``o_proj``). It is traced as one call; removing head ``h`` removes rows ``h*d .. h*d+d-1`` of q, k
and v and the same columns of the output projection (inside it, or the next layer when it lives outside, as in
BERT's ``SelfOutput``), and the head count attribute (and one equal to the inner width, e.g. ``all_head_size``)
is updated, so the module's own forward keeps working. ``head_dim`` stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from repfx_deploy.passes.prune.channels import Cut, Layer, Tensor, matches

if TYPE_CHECKING:
    import torch.nn as nn

HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
QKV_NAMES = (("query", "key", "value"), ("q", "k", "v"), ("q_proj", "k_proj", "v_proj"), ("to_q", "to_k", "to_v"))
OUT_NAMES = ("proj", "out_proj", "o_proj", "to_out")


@dataclass(frozen=True)
class AttentionSpec:
    heads_attr: str
    heads: int
    inner: int  # heads * head_dim
    qkv: tuple[str, ...]  # one fused projection, or three
    out: str | None


def find_attention(m: nn.Module) -> AttentionSpec | None:
    """The attention layout of ``m``, or None when it is not an attention layer this pass can prune by head."""
    import torch.nn as nn

    if isinstance(m, nn.MultiheadAttention):
        return None
    heads_attr = next((a for a in HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)
    if heads_attr is None:
        return None
    heads = getattr(m, heads_attr)
    linears = {n: c for n, c in m.named_children() if isinstance(c, nn.Linear)}

    if "qkv" in linears:
        qkv: tuple[str, ...] = ("qkv",)
        if linears["qkv"].out_features % 3:
            return None
        inner = linears["qkv"].out_features // 3
    else:
        names = next((t for t in QKV_NAMES if all(n in linears for n in t)), None)
        if names is None:
            return None
        qkv = names
        inner = linears[names[0]].out_features
        if any(linears[n].out_features != inner for n in names):
            return None  # grouped-query attention: not handled by head here
    if heads < 1 or inner % heads:
        return None
    out = next((n for n in OUT_NAMES if n in linears and linears[n].in_features == inner), None)
    return AttentionSpec(heads_attr, heads, inner, qkv, out)


def walk(w, node, m: nn.Module, name: str, spec: AttentionSpec):
    """The walker rule for an attention call: input columns, head rows, output projection."""
    x = node.args[0] if node.args else next(iter(node.kwargs.values()))
    rank = len(w.shape(x))
    first = getattr(m, spec.qkv[0])
    ins = w.tensor_in(node, x, -1, first.in_features)
    head_dim = spec.inner // spec.heads
    heads = w.c.new(spec.inner, pinned=matches(name, w.ignore))
    for h in range(spec.heads):
        w.c.union_all(heads[h * head_dim : (h + 1) * head_dim])
    for proj in spec.qkv:
        rows = tuple(heads * 3) if len(spec.qkv) == 1 else tuple(heads)
        w.cuts.append(Cut(f"{name}.{proj}", "weight", 1, tuple(ins), "in"))
        w.cuts.append(Cut(f"{name}.{proj}", "weight", 0, rows, "out"))
        if getattr(m, proj).bias is not None:
            w.cuts.append(Cut(f"{name}.{proj}", "bias", 0, rows, "other"))
        w.layers[f"{name}.{proj}"] = Layer(f"{name}.{proj}", "linear")
    tokens = _tokens(w.shape(x))
    w.macs.append(
        {
            "kind": "attention",
            "name": name,
            "rows": tokens,
            "in": tuple(ins),
            "heads": tuple(heads),
            "qkv": 3,
            "attn_tokens": w.shape(x)[-2] if rank >= 3 else 1,
        }
    )
    w.layers[name] = Layer(
        name, "attention", {"heads_attr": spec.heads_attr, "head_dim": head_dim, "inner": spec.inner}
    )
    if spec.out is None:
        t = w.space(name, Tensor(rank - 1, heads))
    else:
        proj = getattr(m, spec.out)
        outs = w.c.new(proj.out_features, pinned=matches(name, w.ignore))
        w.cuts.append(Cut(f"{name}.{spec.out}", "weight", 1, tuple(heads), "in"))
        w.cuts.append(Cut(f"{name}.{spec.out}", "weight", 0, tuple(outs), "out"))
        if proj.bias is not None:
            w.cuts.append(Cut(f"{name}.{spec.out}", "bias", 0, tuple(outs), "other"))
        w.layers[f"{name}.{spec.out}"] = Layer(f"{name}.{spec.out}", "linear")
        w.macs.append(
            {"kind": "linear", "name": f"{name}.{spec.out}", "rows": tokens, "in": tuple(heads), "out": tuple(outs)}
        )
        w.spaces.append((name, tuple(heads)))
        t = w.space(f"{name}.{spec.out}", Tensor(rank - 1, outs))
    meta = node.meta.get("tensor_meta")
    if meta is not None and not hasattr(meta, "shape"):  # a tuple of outputs (HF returns (context, weights))
        return [t] + [None] * (len(meta) - 1)
    return t


def _tokens(shape) -> int:
    import math

    return math.prod(shape[:-1])
