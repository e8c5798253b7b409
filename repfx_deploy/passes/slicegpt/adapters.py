"""Adapters: turn a Hugging Face model into folded sliceable form, and rotate its embeddings and head.

An adapter knows where a model family keeps its embeddings, layers, norms and linears. ``fold`` folds every
norm's scale (and LayerNorm's bias and mean subtraction) into the linears around it, replaces each layer with a
``SlicedLayer`` that computes the same function, and returns a ``Folded`` handle; the model's outputs do not
change. Rotation and slicing (``rotate.py``) then only touch what ``Folded`` lists. A ``Folded`` refers to
modules of its model: copy the two together (``copy.deepcopy((model, folded))``) to keep them matched.

Supported: Llama-style decoders (``*ForCausalLM`` with ``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm``/``post_attention_layernorm`` RMSNorms, ``model.norm``,
``lm_head``: Llama, SmolLM2, Mistral, Qwen2) and BERT-style post-LayerNorm encoders (``BertModel`` and models
holding one as ``.bert``: ``embeddings`` + ``encoder.layer[i].attention.{self,output}``, ``intermediate``,
``output``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from repfx_deploy.errors import PassError
from repfx_deploy.passes.slicegpt.layers import (
    AttentionBody,
    MLPBody,
    ResidualSublayer,
    SlicedLayer,
)
from repfx_deploy.passes.slicegpt.norms import UnitRMSNorm, centering, norm_scale_bias

Family = Literal["llama", "bert"]


@dataclass
class Folded:
    """A folded model's sliceable parts. ``shortcut_maps[i]`` is sublayer ``i``'s residual map ``S`` (D x D,
    float64; None for the identity) and ``shortcut_biases[i]`` its bias (None for none), in the order
    ``[layer0.attn, layer0.mlp, layer1.attn, ...]``."""

    family: Family
    hidden: int
    layers: list[SlicedLayer]
    embeddings: list[nn.Embedding]
    head_inputs: list[nn.Linear]  # linears reading the last stream: lm_head, or the encoder's unrotate map
    shortcut_maps: list[torch.Tensor | None] = field(default_factory=list)
    shortcut_biases: list[torch.Tensor | None] = field(default_factory=list)

    def sublayers(self) -> list[ResidualSublayer]:
        return [s for layer in self.layers for s in layer.sublayers()]


def find_family(model: nn.Module) -> tuple[Family, Any]:
    """The family of ``model`` and the module the adapter works on; ``PassError`` naming what is supported."""
    # Hugging Face modules are reached by attribute name, so they are typed Any here
    inner: Any = getattr(model, "hf_model", model)  # repfx's wrapper around a Hugging Face model (ingest/hf.py)
    body = getattr(inner, "model", None)
    if hasattr(inner, "lm_head") and body is not None and hasattr(body, "layers") and len(body.layers) > 0:
        layer = body.layers[0]
        if all(hasattr(layer, a) for a in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")):
            if all(hasattr(layer.mlp, a) for a in ("gate_proj", "up_proj", "down_proj")):
                return "llama", inner
    bert = getattr(inner, "bert", inner)
    if hasattr(bert, "embeddings") and hasattr(bert, "encoder") and hasattr(bert.encoder, "layer"):
        layer = bert.encoder.layer[0]
        if hasattr(layer, "attention") and hasattr(layer.attention, "self") and hasattr(layer, "intermediate"):
            return "bert", bert
    raise PassError(
        f"SliceGPT does not know the layout of {type(inner).__name__}.",
        "Use a Llama-style decoder (*ForCausalLM: Llama, SmolLM2, Mistral, Qwen2) or a BERT-style encoder "
        "(BertModel, MiniLM) loaded from a Hugging Face folder.",
    )


def fold(model: nn.Module) -> Folded:
    """Fold ``model``'s norms and install ``SlicedLayer``s in place; outputs are unchanged."""
    family, inner = find_family(model)
    if getattr(inner.config, "is_decoder", False) and family == "bert":
        raise PassError(
            "SliceGPT's BERT adapter takes encoders only; this BERT is configured as a decoder.",
            "Load it as an encoder (is_decoder = false).",
        )
    with torch.no_grad():
        return _fold_llama(inner) if family == "llama" else _fold_bert(inner)


def set_weight(linear: nn.Linear | nn.Embedding, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Replace a linear's (or embedding's) weight, and bias when given, keeping the module object."""
    dtype = linear.weight.dtype
    linear.weight = nn.Parameter(weight.to(dtype).contiguous(), requires_grad=False)
    if isinstance(linear, nn.Linear):
        linear.out_features, linear.in_features = weight.shape
        if bias is not None:
            linear.bias = nn.Parameter(bias.to(dtype).contiguous(), requires_grad=False)
    else:
        linear.embedding_dim = weight.shape[1]


def _scale_inputs(linears: list[nn.Linear], scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    """Fold ``y = (x * scale + shift) W^T + c`` into ``y = x W'^T + c'`` for each linear."""
    for lin in linears:
        w = lin.weight.detach().double()
        bias = lin.bias.detach().double() if lin.bias is not None else None
        if shift is not None:
            extra = w @ shift
            bias = extra if bias is None else bias + extra
        set_weight(lin, w * scale[None, :], bias)


def _fold_llama(model: Any) -> Folded:
    body = model.model
    hidden = int(model.config.hidden_size)
    # The head gets its own rotation, so a head tied to the embedding table is untied first.
    if model.lm_head.weight is body.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(body.embed_tokens.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    layers = []
    for old in body.layers:
        attn, mlp = old.self_attn, old.mlp
        g_attn, _, eps_attn = norm_scale_bias(old.input_layernorm, hidden)
        g_mlp, _, eps_mlp = norm_scale_bias(old.post_attention_layernorm, hidden)
        attn_in = [attn.q_proj, attn.k_proj, attn.v_proj]
        mlp_in = [mlp.gate_proj, mlp.up_proj]
        _scale_inputs(attn_in, g_attn, None)
        _scale_inputs(mlp_in, g_mlp, None)
        a = ResidualSublayer(
            AttentionBody(attn, attn_in, attn.o_proj, keyword_input=True, separate_out=False),
            pre=UnitRMSNorm(hidden, eps_attn),
            post=None,
            shortcut=None,
        )
        m = ResidualSublayer(
            MLPBody(mlp, mlp_in, mlp.down_proj, separate_out=False),
            pre=UnitRMSNorm(hidden, eps_mlp),
            post=None,
            shortcut=None,
        )
        layers.append(SlicedLayer(a, m))
    body.layers = nn.ModuleList(layers)
    g_final, _, eps_final = norm_scale_bias(body.norm, hidden)
    _scale_inputs([model.lm_head], g_final, None)
    body.norm = UnitRMSNorm(hidden, eps_final)
    n = 2 * len(layers)
    return Folded("llama", hidden, layers, [body.embed_tokens], [model.lm_head], [None] * n, [None] * n)


class _BertMLPInner(nn.Module):
    """BERT's intermediate dense + activation (the part of the MLP before its output linear)."""

    def __init__(self, intermediate: nn.Module) -> None:
        super().__init__()
        self.intermediate = intermediate

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.intermediate(h)


def _fold_bert(bert: Any) -> Folded:
    hidden = int(bert.config.hidden_size)
    center = centering(hidden)
    emb = bert.embeddings
    tables = [emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings]
    for table in tables:
        set_weight(table, table.weight.detach().double() @ center)
    g, b, eps = norm_scale_bias(emb.LayerNorm, hidden)
    emb.LayerNorm = UnitRMSNorm(hidden, eps)
    emb.dropout = nn.Identity()
    layers: list[SlicedLayer] = []
    maps: list[torch.Tensor | None] = []
    biases: list[torch.Tensor | None] = []

    def sublayer(
        body: AttentionBody | MLPBody, in_linears: list[nn.Linear], out: Any, ln: nn.Module
    ) -> ResidualSublayer:
        nonlocal g, b, eps
        assert b is not None, "a LayerNorm has a bias"
        _scale_inputs(in_linears, g, b)
        # The output linear writes a zero-mean vector, so the next LayerNorm's mean subtraction is a no-op.
        set_weight(out, center @ out.weight.detach().double(), center @ out.bias.detach().double())
        smap = torch.diag(g) @ center
        sbias = b @ center
        shortcut = nn.Linear(hidden, hidden, bias=True).to(out.weight.dtype)
        set_weight(shortcut, smap.T, sbias)
        maps.append(smap)
        biases.append(sbias)
        g, b, eps = norm_scale_bias(ln, hidden)
        return ResidualSublayer(body, pre=None, post=UnitRMSNorm(hidden, eps), shortcut=shortcut)

    for old in bert.encoder.layer:
        sa = old.attention.self
        attn_in = [sa.query, sa.key, sa.value]
        a = sublayer(
            AttentionBody(sa, attn_in, old.attention.output.dense, keyword_input=False, separate_out=True),
            attn_in,
            old.attention.output.dense,
            old.attention.output.LayerNorm,
        )
        mlp_in = [old.intermediate.dense]
        m = sublayer(
            MLPBody(_BertMLPInner(old.intermediate), mlp_in, old.output.dense, separate_out=True),
            mlp_in,
            old.output.dense,
            old.output.LayerNorm,
        )
        layers.append(SlicedLayer(a, m))
    bert.encoder.layer = nn.ModuleList(layers)
    # The last LayerNorm's scale and bias map the stream back to the encoder's output basis.
    unrotate = nn.Linear(hidden, hidden, bias=True).to(tables[0].weight.dtype)
    set_weight(unrotate, torch.diag(g), b)
    layers[-1].unrotate = unrotate
    return Folded("bert", hidden, layers, tables, [unrotate], maps, biases)
