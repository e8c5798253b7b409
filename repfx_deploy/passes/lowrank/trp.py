"""Trained Rank Pruning's regularizer: a nuclear-norm penalty for ``recovery.distill``'s ``extra_loss``.

The nuclear norm (sum of singular values) is the convex surrogate of rank: its gradient ``U V^T`` shrinks every
singular value by the same amount, so the small ones reach zero first and the energy left for truncation to
discard falls. Each layer's matrix is the one its factorization scheme decomposes (``factorize.weight_matrix``),
and a factorized pair contributes the norm of ``second @ first``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from repfx_deploy.passes.lowrank.factorize import Factorized, Scheme, layer_weight, weight_matrix


def nuclear_norm(model: nn.Module, layers: dict[str, Scheme]) -> torch.Tensor:
    """Sum of the nuclear norms of ``layers`` (name -> scheme) of ``model`` (differentiable)."""
    total = None
    for name, scheme in layers.items():
        layer = model.get_submodule(name)
        m = layer.effective_matrix() if isinstance(layer, Factorized) else weight_matrix(layer_weight(layer), scheme)
        term = torch.linalg.svdvals(m if m.shape[0] >= m.shape[1] else m.T).sum()  # tall: see factorize.svd
        total = term if total is None else total + term
    if total is None:
        raise ValueError("nuclear_norm: no layers given")
    return total


def nuclear_penalty(layers: dict[str, Scheme], weight: float) -> Callable[[nn.Module], torch.Tensor]:
    """``extra_loss`` for ``distill``: ``weight * nuclear_norm(student, layers)``."""
    if not weight > 0:
        raise ValueError(f"nuclear_penalty: weight must be > 0, got {weight}")

    def penalty(student: nn.Module) -> torch.Tensor:
        return weight * nuclear_norm(student, layers)

    return penalty
