"""Which transformer blocks can be patched, and how each encoder family computes its block.

Families:
  torch   ``nn.TransformerEncoderLayer`` (pre- or post-norm, batch-first or not), attention through its
          ``nn.MultiheadAttention``'s packed ``in_proj_weight`` and ``out_proj``;
  timm    a timm-style ``Block``: ``attn.qkv``/``attn.proj``/``attn.num_heads`` (+ optional ``attn.q_norm``,
          ``attn.k_norm``), ``norm1``, ``norm2``, ``mlp``, optional LayerScale ``ls1``/``ls2``;
  hf      Hugging Face ViT / DINOv2 layers: ``attention`` with ``q_proj``/``k_proj``/``v_proj``/``o_proj``
          (transformers 5) or ``attention.query/key/value`` + ``output.dense`` (transformers 4), norms
          ``layernorm_before``/``layernorm_after`` (ViT) or ``norm1``/``norm2`` (DINOv2), ``mlp`` or
          ``intermediate``/``output``, optional ``layer_scale1``/``layer_scale2``.
Any other module holding an attention layer is refused with a ``PassError`` naming its path.
"""

from __future__ import annotations

from typing import Any, cast

import torch.nn as nn
import torch.nn.functional as F

from repfx_deploy.errors import PassError
from repfx_deploy.passes.tokens.block import TokenReducedBlock


def _has(module: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return False
    return True


def _get(module: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


class TorchEncoderBlock(TokenReducedBlock):
    family = "torch"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return isinstance(module, nn.TransformerEncoderLayer)

    @classmethod
    def build(cls, layer: nn.Module, path: str) -> TorchEncoderBlock:
        mha = cast(nn.TransformerEncoderLayer, layer).self_attn  # matches() accepted only these
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise PassError(
                f"Cannot patch {path!r}: its MultiheadAttention uses separate key/value sizes, bias_k/bias_v or add_zero_attn.",
                f"Leave this model out of the tokens pass, or rebuild {path!r} with plain self-attention.",
            )
        return cls(cast(nn.TransformerEncoderLayer, layer))

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        mha = layer.self_attn
        super().__init__(
            layer,
            num_heads=mha.num_heads,
            scale=mha.head_dim**-0.5,
            pre_norm=layer.norm_first,
            batch_first=mha.batch_first,
        )
        # the activation is a function (F.relu) or a module (already a child under the same name)
        if not isinstance(layer.activation, nn.Module):
            self._activation = layer.activation

    def _project_qkv(self, h):
        return F.linear(h, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias).chunk(3, dim=-1)

    def _project_out(self, o):
        return self.self_attn.out_proj(o)

    def _norm1(self, x):
        return self.norm1(x)

    def _norm2(self, x):
        return self.norm2(x)

    def _mlp(self, x):
        act = self.activation if isinstance(getattr(self, "activation", None), nn.Module) else self._activation
        return self.linear2(act(self.linear1(x)))


class TimmBlock(TokenReducedBlock):
    family = "timm"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return all(_has(module, p) for p in ("attn.qkv", "attn.proj", "norm1", "norm2", "mlp")) and isinstance(
            getattr(module.attn, "num_heads", None), int
        )

    @classmethod
    def build(cls, block: nn.Module, path: str) -> TimmBlock:
        qkv = _get(block, "attn.qkv")
        if not isinstance(qkv, nn.Linear):
            raise PassError(
                f"Cannot patch {path!r}: its attn.qkv is a {type(qkv).__name__}, not a Linear.",
                "Leave this model out of the tokens pass.",
            )
        return cls(block)

    def __init__(self, block: nn.Module) -> None:
        attn = _get(block, "attn")
        head_dim = attn.qkv.out_features // 3 // attn.num_heads
        super().__init__(
            block, num_heads=attn.num_heads, scale=float(getattr(attn, "scale", head_dim**-0.5)), pre_norm=True
        )

    def _project_qkv(self, h):
        return self.attn.qkv(h).chunk(3, dim=-1)

    def _qk_norm(self, q, k):
        qn, kn = getattr(self.attn, "q_norm", None), getattr(self.attn, "k_norm", None)
        return (qn(q) if qn is not None else q), (kn(k) if kn is not None else k)

    def _project_out(self, o):
        return self.attn.proj(o)

    def _norm1(self, x):
        return self.norm1(x)

    def _norm2(self, x):
        return self.norm2(x)

    def _mlp(self, x):
        return self.mlp(x)

    def _scale1(self, x):
        return self.ls1(x) if hasattr(self, "ls1") else x

    def _scale2(self, x):
        return self.ls2(x) if hasattr(self, "ls2") else x


_HF_QKV = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
    ("attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense"),
)
_HF_NORMS = (("layernorm_before", "layernorm_after"), ("norm1", "norm2"))


class HFViTBlock(TokenReducedBlock):
    family = "hf"

    @staticmethod
    def matches(module: nn.Module) -> bool:
        return any(all(_has(module, p) for p in names) for names in _HF_QKV) and any(
            all(_has(module, p) for p in n) for n in _HF_NORMS
        )

    @classmethod
    def build(cls, layer: nn.Module, path: str) -> HFViTBlock:
        if not (_has(layer, "mlp") or (_has(layer, "intermediate.dense") and _has(layer, "output.dense"))):
            raise PassError(
                f"Cannot patch {path!r}: no mlp (or intermediate/output) module found.",
                "Leave this model out of the tokens pass.",
            )
        return cls(layer)

    def __init__(self, layer: nn.Module) -> None:
        self._paths = next(names for names in _HF_QKV if all(_has(layer, p) for p in names))
        self._norms = next(n for n in _HF_NORMS if all(_has(layer, p) for p in n))
        holder = _get(layer, self._paths[0].rsplit(".", 1)[0])
        heads = getattr(holder, "num_attention_heads", None) or _get(layer, "attention").config.num_attention_heads
        head_dim = _get(layer, self._paths[0]).out_features // heads
        super().__init__(
            layer,
            num_heads=heads,
            scale=float(getattr(holder, "scaling", head_dim**-0.5)),
            pre_norm=True,
            returns_tuple=_has(layer, "intermediate"),
        )  # transformers 4 layers return a tuple

    def _project_qkv(self, h):
        return tuple(_get(self, p)(h) for p in self._paths[:3])

    def _project_out(self, o):
        return _get(self, self._paths[3])(o)

    def _norm1(self, x):
        return _get(self, self._norms[0])(x)

    def _norm2(self, x):
        return _get(self, self._norms[1])(x)

    def _mlp(self, x):
        if hasattr(self, "mlp"):
            return self.mlp(x)
        return self.output.dense(self.intermediate(x))

    def _scale1(self, x):
        return self.layer_scale1(x) if hasattr(self, "layer_scale1") else x

    def _scale2(self, x):
        return self.layer_scale2(x) if hasattr(self, "layer_scale2") else x


FAMILIES = (TorchEncoderBlock, TimmBlock, HFViTBlock)


def _is_attention(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.MultiheadAttention) or name.endswith("Attention") or name.endswith("SelfAttention")


def patch_blocks(model: nn.Module) -> list[tuple[str, TokenReducedBlock]]:
    """Replace every supported transformer block of ``model`` (in place) by its token-reducing version, in
    model order. ``PassError`` names the first module with attention that is not inside a supported block,
    or the model when it has no attention at all."""
    found: list[tuple[str, nn.Module, type[TorchEncoderBlock | TimmBlock | HFViTBlock]]] = []
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") for p, _, _ in found):
            continue
        family = next((f for f in FAMILIES if f.matches(module)), None)
        if family is not None:
            found.append((path, module, family))
            continue
        if _is_attention(module):
            owner = path.rpartition(".")[0]
            owner_type = type(model.get_submodule(owner)).__name__
            raise PassError(
                f"The tokens pass cannot patch {owner or '(the model)'!r} ({owner_type}): its attention {path!r} "
                f"({type(module).__name__}) is not inside a supported transformer block.",
                "Supported: nn.TransformerEncoderLayer, timm-style Block (attn.qkv/attn.proj/norm1/norm2/mlp), "
                "Hugging Face ViT/DINOv2 layers. Leave this model out of the tokens pass.",
            )
    if not found:
        raise PassError(
            f"No transformer block found in {type(model).__name__}: the tokens pass has nothing to patch.",
            "Use the tokens pass on a ViT built from nn.TransformerEncoderLayer, timm-style Blocks or Hugging Face ViT/DINOv2 layers.",
        )
    patched: list[tuple[str, TokenReducedBlock]] = []
    for path, module, family in found:
        block = family.build(module, path)
        parent_path, _, name = path.rpartition(".")
        parent = _get(model, parent_path) if parent_path else model
        if not path:
            raise PassError(
                "The model is itself a single transformer block.", "Wrap it in a model that embeds the tokens."
            )
        setattr(parent, name, block)
        patched.append((path, block))
    return patched


__all__ = ["FAMILIES", "HFViTBlock", "TimmBlock", "TorchEncoderBlock", "patch_blocks"]
