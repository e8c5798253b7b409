"""Measured sensitivity: how much the model's output moves when one layer alone is factorized at a rank.

For every layer and scheme, ``points`` ranks spread evenly over its useful ranks are tried one at a time on a
few calibration batches; the loss is the relative squared error of the model's outputs against the dense
model's, ``sum ||y - y_dense||^2 / sum ||y_dense||^2``. Unlike discarded energy it sees how much a layer matters
to the output (a layer before a BatchNorm or a residual add may tolerate more truncation than its spectrum says).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from repfx_deploy.passes.lowrank.factorize import factorize
from repfx_deploy.passes.lowrank.layers import set_submodule
from repfx_deploy.passes.lowrank.ranks import Option, candidate_ranks, dense_option

if TYPE_CHECKING:
    from repfx_deploy.passes.lowrank.core import Candidate


def spread(ranks: list[int], points: int) -> list[int]:
    """Up to ``points`` of ``ranks`` spaced evenly, the smallest and largest included."""
    if len(ranks) <= points:
        return list(ranks)
    if points == 1:
        return [ranks[0]]
    idx = sorted({round(i * (len(ranks) - 1) / (points - 1)) for i in range(points)})
    return [ranks[i] for i in idx]


def _outputs(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    with torch.no_grad():
        for b in batches:
            y = model(b)
            out.append((y[0] if isinstance(y, (tuple, list)) else y).detach().double())
    return out


def _relative_error(ys: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    num = sum(float(((y - r) ** 2).sum()) for y, r in zip(ys, refs))
    den = sum(float((r**2).sum()) for r in refs) or 1.0
    return num / den


def measured_options(
    model: nn.Module,
    layers: dict[str, Candidate],
    batches: list[torch.Tensor],
    *,
    round_to: int,
    points: int,
) -> dict[str, list[Option]]:
    """Per layer: dense plus up to ``points`` measured ranks per scheme (each pair built from the layer's cached
    SVD). ``model`` is restored afterwards."""
    was_training = model.training
    model.eval()
    reference = _outputs(model, batches)
    out: dict[str, list[Option]] = {}
    try:
        for name, cand in layers.items():
            shape = cand.shape
            layer = model.get_submodule(name)
            options = [dense_option(shape)]
            for scheme in cand.schemes:
                for r in spread(candidate_ranks(shape, scheme, round_to), points):
                    set_submodule(model, name, factorize(layer, scheme, r, cand.svds[scheme]))
                    try:
                        loss = _relative_error(_outputs(model, batches), reference)
                    finally:
                        set_submodule(model, name, layer)
                    options.append(Option(scheme, r, shape.params(scheme, r), shape.macs(scheme, r), loss))
            out[name] = options
    finally:
        model.train(was_training)
    return out
