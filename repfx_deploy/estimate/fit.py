"""Fitting an estimator's few global parameters to measured (or published) whole-model latencies.

Used by ``benchmarks/estimator.py``, which prints the fitted values for a profile's ``[estimator]`` table; the
estimator itself only reads them. Errors are relative (a 10 % miss on a 0.1 ms model counts like one on a 100 ms
model), and the search is a plain grid / coordinate descent in log space: a handful of parameters, a few dozen
models, no optimiser dependency needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from repfx_deploy.estimate.analytic import LayerCost, layer_latency_ms
from repfx_deploy.targets import EstimatorParams


def lut_prediction_ms(
    raw_ms: Sequence[float],
    scale: float,
    offset_us: float,
    run_us: float = 0.0,
    weight_bytes: float = 0.0,
    weight_gbs: float = 0.0,
) -> float:
    """Whole-model prediction from standalone per-layer latencies (the formula ``model.py`` applies);
    ``weight_bytes`` is the model's total over its layers."""
    cold_ms = weight_bytes / (weight_gbs * 1e6) if weight_gbs > 0 else 0.0
    return float(np.maximum(0.0, scale * np.asarray(raw_ms) + offset_us * 1e-3).sum()) + run_us * 1e-3 + cold_ms


def fit_lut_correction(models: Sequence[tuple[Sequence[float], float, float]]) -> tuple[float, float, float, float]:
    """``(lut_scale, lut_node_offset_us, lut_run_overhead_us, lut_weight_gbs)`` minimising the mean squared
    relative error.

    Each model is ``(standalone per-layer latencies in ms, total weight bytes, measured whole-model ms)``. For
    each (scale, offset) on a grid, the run overhead and the per-byte weight cost enter linearly and are solved
    by weighted least squares (both kept >= 0; a zero weight cost means ``lut_weight_gbs = 0``, no term).
    """
    raws = [np.asarray(r, dtype=float) for r, _, _ in models]
    weights_mb = np.asarray([w / 1e6 for _, w, _ in models], dtype=float)
    measured = np.asarray([m for _, _, m in models], dtype=float)
    inv = 1.0 / measured

    def solve(scale: float, offset_us: float) -> tuple[float, float, float]:
        pred = np.asarray([np.maximum(0.0, scale * r + offset_us * 1e-3).sum() for r in raws])
        resid = (measured - pred) * inv  # what run overhead (x 1) and weight cost (x MB) must explain, relative
        design = np.stack([inv, weights_mb * inv], axis=1)
        best: tuple[float, float, float] | None = None
        for cols in ((0, 1), (0,), (1,), ()):  # non-negative least squares over two unknowns, by cases
            coef = np.zeros(2)
            if cols:
                sol, *_ = np.linalg.lstsq(design[:, cols], resid, rcond=None)
                if np.any(sol < 0):
                    continue
                coef[list(cols)] = sol
            loss = float(np.mean((resid - design @ coef) ** 2))
            if best is None or loss < best[0]:
                best = (loss, float(coef[0]), float(coef[1]))
        assert best is not None, "the case with no unknowns is never skipped"
        return best

    scales, offsets = np.linspace(0.3, 2.0, 35), np.linspace(-30.0, 10.0, 41)
    result = (1.0, 0.0, 0.0, 0.0)
    for _ in range(4):  # coarse to fine around the best point
        grid = [(*solve(s, o), s, o) for s in scales for o in offsets]
        _, run_ms, ms_per_mb, s, o = min(grid)
        result = (float(s), float(o), run_ms * 1e3, 1.0 / ms_per_mb if ms_per_mb > 0 else 0.0)  # MB/ms = GB/s
        ds, do = (scales[1] - scales[0]) * 2, (offsets[1] - offsets[0]) * 2
        scales = np.linspace(max(0.01, s - ds), s + ds, 21)
        offsets = np.linspace(o - do, o + do, 21)
    return result


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
                tied: dict[str, Any] = {key: value for key in group}  # group names float fields of EstimatorParams
                trial = dataclasses.replace(params, **tied)
                candidates.append((loss(trial), value))
            _, value = min(candidates)
            chosen: dict[str, Any] = {key: value for key in group}
            params = dataclasses.replace(params, **chosen)
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
