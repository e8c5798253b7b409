"""A transformer layer rebuilt as two residual sublayers on a rotated residual stream.

Each sublayer computes ``post(shortcut(x) + body(pre(x)))``: ``pre`` is a weightless norm for pre-norm models
(Llama) and ``post`` one for post-norm models (BERT). ``shortcut`` is the map the residual connection needs once
the stream is rotated: ``Q_in^T S Q_out``, with ``S`` the identity (pre-norm) or the folded LayerNorm's
``diag(g) M`` plus bias ``b M`` (post-norm). ``body`` is the attention or MLP whose input linears read the
rotated stream and whose output linear writes the next stream's rotation.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class _Body(nn.Module):
    """A sublayer body: knows the linears that read the (rotated) stream and the one that writes it. ``out_proj``
    (when the wrapped module does not apply its own output projection, as in BERT) is applied to its result."""

    _in_linears: list[nn.Linear]
    _out_linear: nn.Linear

    def __init__(self, in_linears: list[nn.Linear], out_linear: nn.Linear, *, separate_out: bool) -> None:
        super().__init__()
        self.out_proj = out_linear if separate_out else None
        # Kept out of the module tree (they are already in it, under the wrapped module or ``out_proj``), so the
        # state_dict names each parameter once.
        self.__dict__["_in_linears"] = in_linears
        self.__dict__["_out_linear"] = out_linear

    def in_linears(self) -> list[nn.Linear]:
        return self._in_linears

    def out_linear(self) -> nn.Linear:
        return self._out_linear

    def _project(self, out: torch.Tensor) -> torch.Tensor:
        return self.out_proj(out) if self.out_proj is not None else out


class AttentionBody(_Body):
    """Calls a Hugging Face self-attention module on ``h``."""

    def __init__(
        self,
        attention: nn.Module,
        in_linears: list[nn.Linear],
        out_linear: nn.Linear,
        *,
        keyword_input: bool,
        separate_out: bool,
    ) -> None:
        super().__init__(in_linears, out_linear, separate_out=separate_out)
        self.attention = attention
        self.keyword_input = keyword_input

    def forward(self, h: torch.Tensor, **kwargs) -> torch.Tensor:
        # Cross-attention inputs of the HF layer signature are never used by an encoder or decoder-only model.
        kwargs.pop("encoder_hidden_states", None)
        kwargs.pop("encoder_attention_mask", None)
        if self.keyword_input:
            out = self.attention(hidden_states=h, **kwargs)[0]
        else:
            out = self.attention(h, **kwargs)[0]
        return self._project(out)


class MLPBody(_Body):
    """``out_linear(inner(h))``, where ``inner`` holds the input linears and the activation."""

    def __init__(
        self, inner: nn.Module, in_linears: list[nn.Linear], out_linear: nn.Linear, *, separate_out: bool
    ) -> None:
        super().__init__(in_linears, out_linear, separate_out=separate_out)
        self.inner = inner

    def forward(self, h: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._project(self.inner(h))


class ResidualSublayer(nn.Module):
    """``post(shortcut(x) + body(pre(x)))``; ``shortcut`` None means the identity (before any rotation)."""

    body: _Body

    def __init__(self, body: _Body, pre: nn.Module | None, post: nn.Module | None, shortcut: nn.Linear | None) -> None:
        super().__init__()
        self.body = body
        self.pre = pre if pre is not None else nn.Identity()
        self.post = post if post is not None else nn.Identity()
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        y = self.body(self.pre(x), **kwargs)
        residual = self.shortcut(x) if self.shortcut is not None else x
        return self.post(residual + y)


class SlicedLayer(nn.Module):
    """A transformer layer (attention then MLP) on the rotated stream, called like the layer it replaces.

    ``unrotate`` (the last layer of an encoder only) maps the rotated stream back to the model's original
    output basis, so ``last_hidden_state`` means what it meant before slicing.
    """

    def __init__(self, attn: ResidualSublayer, mlp: ResidualSublayer) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp
        self.unrotate: nn.Linear | None = None

    def sublayers(self) -> tuple[ResidualSublayer, ResidualSublayer]:
        return self.attn, self.mlp

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs
    ) -> torch.Tensor:
        # HF encoders pass (hidden, mask, encoder_hidden_states) positionally; decoders pass keywords.
        x = self.attn(hidden_states, attention_mask=attention_mask, **kwargs)
        x = self.mlp(x)
        return self.unrotate(x) if self.unrotate is not None else x
