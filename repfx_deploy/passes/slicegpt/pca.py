"""Principal axes of the residual stream, from calibration activations."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def covariance(
    activations: Iterable[torch.Tensor], masks: Iterable[torch.Tensor], *, unit_tokens: bool = False
) -> torch.Tensor:
    """``sum x x^T`` (float64, D x D) over every token whose mask is true. Not mean-centred, as in SliceGPT:
    the rotation must keep the stream's mean direction too, since the model reads it.

    ``unit_tokens`` scales each token to unit length first. A pre-norm model's residual stream has a few tokens
    (the first of a sequence, "attention sinks") whose norm is orders of magnitude above the rest; they then
    own the covariance, and the axes fit them instead of the typical token. Since every reader of the stream
    normalises it first, the relative error per token is what matters, and unit tokens weigh them equally."""
    cov = None
    for x, mask in zip(activations, masks):
        tokens = x.detach()[mask].double()
        if unit_tokens:
            tokens = tokens / tokens.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        part = tokens.T @ tokens
        cov = part if cov is None else cov + part
    if cov is None:
        raise ValueError("no calibration activations")
    return cov


def principal_axes(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors of ``cov`` as columns, by decreasing eigenvalue, and those eigenvalues (float64)."""
    cov = (cov + cov.T) / 2  # summation order leaves it asymmetric by rounding
    values, vectors = torch.linalg.eigh(cov)
    order = torch.argsort(values, descending=True)
    return vectors[:, order], values[order]


def energy_kept(values: torch.Tensor, kept: int) -> float:
    """The fraction of the stream's energy (sum of eigenvalues) in the ``kept`` leading directions."""
    total = float(values.clamp(min=0).sum())
    return float(values[:kept].clamp(min=0).sum()) / total if total > 0 else 1.0
