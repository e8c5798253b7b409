"""The normalisation a folded model uses, and the matrices that fold LayerNorm into linears.

After folding, every norm in the model is ``x * rsqrt(sum(x^2) / D + eps)`` with the *original* width ``D``: it
has no scale, no bias and no mean subtraction, so it commutes with any orthogonal rotation of ``x`` (the norm
of a vector does not change when it is rotated). Keeping ``D`` fixed after slicing is what makes the sliced
model's norms see the same scale as the dense ones: the dropped directions carry little energy.

- RMSNorm (Llama): ``g * x / rms(x)``; ``g`` moves into the linears that read the norm's output.
- LayerNorm (BERT): ``g * (x - mean(x)) / std(x) + b``. If ``x`` already has zero mean, ``std`` is the RMS of
  ``x``, so the mean subtraction moves into whatever writes ``x``: its output is multiplied by the centering
  matrix ``M = I - 11^T / D`` (rows of embedding tables, output rows of linears, shortcut maps). ``g`` and
  ``b`` move into the readers (the next sublayer's input linears and the shortcut, which becomes affine).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class UnitRMSNorm(nn.Module):
    """``x / sqrt(sum(x^2) / dim + eps)``: a weightless RMS norm over a stream that was ``dim`` wide before slicing."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dim = int(dim)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.dim + self.eps)
        return x.to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


def centering(dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``M = I - 11^T / dim``: right-multiplying a row vector by it subtracts the vector's mean."""
    return torch.eye(dim, dtype=dtype) - torch.full((dim, dim), 1.0 / dim, dtype=dtype)


def norm_scale_bias(norm: nn.Module, dim: int) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """A RMSNorm's or LayerNorm's ``(scale, bias or None, eps)`` in float64; ``ValueError`` for anything else."""
    weight = getattr(norm, "weight", None)
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(norm, "eps", None)
    if weight is None or eps is None or tuple(weight.shape) != (dim,):
        raise ValueError(f"{type(norm).__name__} is not a per-channel RMSNorm or LayerNorm over {dim} channels")
    bias = getattr(norm, "bias", None)
    return weight.detach().double(), (bias.detach().double() if bias is not None else None), float(eps)
