"""Weight surgery: rotate (and slice) what reads a stream and what writes one.

Streams are row vectors; a stream rotated by ``Q`` (D x d, orthonormal columns, the leading principal axes) is
``x Q``. A linear reading it needs its torch weight right-multiplied by ``Q`` (``W Q``: input side); a linear
writing into it needs its weight and bias left-multiplied by ``Q^T`` (output side). With ``d = D`` the model
computes exactly what it did; with ``d < D`` the directions of least energy are deleted.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from repfx_deploy.passes.slicegpt.adapters import set_weight
from repfx_deploy.passes.slicegpt.layers import ResidualSublayer


def rotate_reader(module: nn.Linear | nn.Embedding, q: torch.Tensor) -> None:
    """A linear or embedding table that reads (linear) or writes rows into (embedding) a stream rotated by ``q``."""
    w = module.weight.detach().double()
    set_weight(module, w @ q)


def rotate_writer(linear: nn.Linear, q: torch.Tensor) -> None:
    """A linear whose output is the stream rotated by ``q``: ``W <- Q^T W``, ``b <- Q^T b``."""
    w = linear.weight.detach().double()
    bias = linear.bias.detach().double() @ q if linear.bias is not None else None
    set_weight(linear, q.T @ w, bias)


def rotate_sublayer_inputs(
    sub: ResidualSublayer, q_in: torch.Tensor, smap: torch.Tensor | None, sbias: torch.Tensor | None, dtype: torch.dtype
) -> None:
    """Make ``sub`` read the stream rotated by ``q_in``; its output is left in the original basis, with the
    shortcut mapping the rotated input back (``Q_in^T S``, ``d_in x D``)."""
    for lin in sub.body.in_linears():
        rotate_reader(lin, q_in)
    back = q_in.T if smap is None else q_in.T @ smap
    shortcut = nn.Linear(back.shape[0], back.shape[1], bias=sbias is not None).to(dtype)
    set_weight(shortcut, back.T, sbias)
    sub.shortcut = shortcut


def rotate_sublayer_outputs(sub: ResidualSublayer, q_out: torch.Tensor) -> None:
    """Make ``sub`` write the stream rotated by ``q_out`` (after ``rotate_sublayer_inputs``)."""
    assert sub.shortcut is not None, "rotate_sublayer_inputs gives every sublayer a shortcut"
    rotate_writer(sub.body.out_linear(), q_out)
    rotate_writer(sub.shortcut, q_out)
