"""Fitting an estimator's few global parameters to measured (or published) whole-model latencies.

Used by ``benchmarks/estimator.py``, which prints the fitted values for a profile's ``[estimator]`` table; the
estimator itself only reads them. Errors are relative (a 10 % miss on a 0.1 ms model counts like one on a 100 ms
model), and the search is a plain grid / coordinate descent in log space: a handful of parameters, a few dozen
models, no optimiser dependency needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from repfx_deploy.estimate.analytic import LayerCost, layer_latency_ms
from repfx_deploy.targets import EstimatorParams


def lut_prediction_ms(raw_ms: Sequence[float], scale: float, offset_us: float, run_us: float = 0.0) -> float:
    """Whole-model prediction from standalone per-layer latencies (the formula ``model.py`` applies)."""
    return float(np.maximum(0.0, scale * np.asarray(raw_ms) + offset_us * 1e-3).sum()) + run_us * 1e-3


def fit_lut_correction(models: Sequence[tuple[Sequence[float], float]]) -> tuple[float, float, float]:
    """``(lut_scale, lut_node_offset_us, lut_run_overhead_us)`` minimising the mean squared relative error.

    Each model is ``(standalone per-layer latencies in ms, measured whole-model latency in ms)``. For each
    (scale, offset) on a grid the best non-negative run overhead has a closed form (weighted least squares).
    """
    raws = [np.asarray(r, dtype=float) for r, _ in models]
    measured = np.asarray([m for _, m in models], dtype=float)
    w = 1.0 / measured

    def solve(scale: float, offset_us: float) -> tuple[float, float]:
        pred = np.asarray([np.maximum(0.0, scale * r + offset_us * 1e-3).sum() for r in raws])
        run_ms = max(0.0, float(np.sum((1.0 - pred * w) * w) / np.sum(w * w)))
        return float(np.mean(((pred + run_ms) * w - 1.0) ** 2)), run_ms

    scales, offsets = np.linspace(0.3, 2.0, 35), np.linspace(-30.0, 10.0, 41)
    best = (1.0, 0.0, 0.0)
    for _ in range(4):  # coarse to fine around the best point
        grid = [(*solve(s, o), s, o) for s in scales for o in offsets]
        _, run_ms, s, o = min(grid)
        best = (float(s), float(o), run_ms * 1e3)
        ds, do = (scales[1] - scales[0]) * 2, (offsets[1] - offsets[0]) * 2
        scales = np.linspace(max(0.01, s - ds), s + ds, 21)
        offsets = np.linspace(o - do, o + do, 21)
    return best


def analytic_prediction_ms(costs: Sequence[LayerCost], params: EstimatorParams) -> float:
    return sum(layer_latency_ms(c, params) for c in costs)


def fit_analytic(
    models: Sequence[tuple[Sequence[LayerCost], float]],
    base: EstimatorParams,
    groups: Sequence[Sequence[str]],
    rounds: int = 6,
) -> EstimatorParams:
    """``base`` with each group of parameters (tied: one value for all in a group) fitted to ``models``.

    Each model is ``(its layer costs, measured or published latency in ms)``. Minimises the mean squared log
    ratio of predicted to measured latency by coordinate descent over a log grid that narrows each round.
    """
    measured = np.asarray([m for _, m in models], dtype=float)

    def loss(p: EstimatorParams) -> float:
        pred = np.asarray([analytic_prediction_ms(c, p) for c, _ in models])
        return float(np.mean(np.log(np.maximum(pred, 1e-9) / measured) ** 2))

    params, span = base, 3.0  # first round: each value within e^(+-3), about 20x either way
    for _ in range(rounds):
        for group in groups:
            start = getattr(params, group[0])
            candidates = []
            for factor in np.exp(np.linspace(-span, span, 25)):
                value = float(start * factor)
                if group[0] == "overhead_us":
                    value = min(value, 1e5)
                trial = dataclasses.replace(params, **{key: value for key in group})
                candidates.append((loss(trial), value))
            _, value = min(candidates)
            params = dataclasses.replace(params, **{key: value for key in group})
        span /= 3.0
    return params


def error_summary(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> dict:
    """Fraction of models within +-10 %, mean absolute percentage error, and the worst miss (percent)."""
    pred, meas = np.asarray(predicted_ms, dtype=float), np.asarray(measured_ms, dtype=float)
    rel = pred / meas - 1.0
    return {
        "models": int(len(meas)),
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)) if len(meas) else 0.0,
        "mape_pct": float(np.mean(np.abs(rel)) * 100) if len(meas) else 0.0,
        "worst_pct": float(rel[np.argmax(np.abs(rel))] * 100) if len(meas) else 0.0,
    }
