"""Tier 2 and 3 of the latency: the front (and the trials nearest it) measured whole, the predictor recalibrated.

    outcome = measure_front(study, chain, predictor, near=2, budgets=config.budgets)
    outcome.trials         # the study's trials with their measurements in user_attrs (copies)
    outcome.error          # the predictor's MAPE and Kendall tau against the measurements

Once measured, a trial's latency is the measured one and the budgets are judged on it; that can move the front
(a member over the budget once measured drops out, a trial it dominated comes in), so measuring goes on until
every member of the front judged on measurements has been measured, or ``max_rounds`` rounds.

Measurements are stored in the study's user attributes (a finished trial cannot be changed), with the raw
prediction they are paired with, so a resumed search measures nothing twice and recalibrates on every pair.
A candidate whose whole model fails to export, compile or run is recorded with its error and is never feasible.
Between rounds the predictor is recalibrated on every pair, and the trials not measured are compared with the
measured ones at their corrected prediction, so a predictor off by a common factor (a layer table summing
standalone layers) does not keep putting unmeasured trials on the front.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RepfxError
from repfx_deploy.search.front import (
    BudgetLike,
    completed,
    is_measured,
    measurement_key,
    measurements,
    nearest_to_front,
    pareto_front,
    with_measurements,
)
from repfx_deploy.search.study import ASSIGNMENT

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from repfx_deploy.passes.chain import PreparedChain
    from repfx_deploy.search.predictor import LatencyPredictor

log = logging.getLogger("repfx_deploy.search")


@dataclass
class MeasureOutcome:
    """What ``measure_front`` did: the trials with measurements, how many it took now (``new``), the predictor's
    error after recalibration, and the time spent."""

    trials: list[FrozenTrial]
    new: int = 0
    failed: int = 0
    error: dict[str, Any] = field(default_factory=dict)
    time_s: float = 0.0
    pairs: list[tuple[float, float]] = field(default_factory=list)


def assignment_of(trial: FrozenTrial) -> dict[str, Any]:
    """The whole assignment a trial scored: the objective's record of it, else its params."""
    stored = trial.user_attrs.get(ASSIGNMENT)
    return dict(stored) if isinstance(stored, dict) else dict(trial.params)


def _raw_prediction(trial: FrozenTrial) -> float | None:
    """The uncorrected tier-1 prediction the trial was scored with (the score's ``latency_raw_ms``), else its
    latency objective."""
    for where in (trial.user_attrs, trial.user_attrs.get("details") or {}, trial.user_attrs.get("score") or {}):
        value = where.get("latency_raw_ms") if isinstance(where, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return float(trial.values[1]) if trial.values is not None and len(trial.values) > 1 else None


def measure_one(chain: PreparedChain, predictor: LatencyPredictor, trial: FrozenTrial) -> dict[str, Any]:
    """Build ``trial``'s candidate and measure it whole; the record stored for it (an ``error`` on failure)."""
    try:
        run = chain.apply(assignment_of(trial))
        raw = float(predictor.predict(run).raw_ms)
        m = predictor.measure(run)
    except RepfxError as e:
        log.warning("trial %d could not be measured whole: %s", trial.number, e)
        return {"latency_ms": None, "error": f"{type(e).__name__}: {e.problem}"}
    record: dict[str, Any] = {"latency_ms": float(m.latency_ms), "source": m.source, "predicted_raw_ms": raw}
    record.update({k: v for k, v in m.details.items() if k in ("measure_s", "compile_s")})
    return record


def measure_front(
    study: optuna.Study,
    chain: PreparedChain,
    predictor: LatencyPredictor,
    *,
    near: int,
    budgets: Sequence[BudgetLike] = (),
    max_rounds: int = 4,
) -> MeasureOutcome:
    """Measure the front and the ``near`` trials nearest it whole, then every new front member the measurements
    bring in (up to ``max_rounds`` rounds); recalibrate ``predictor`` on every stored pair. See the module
    docstring."""
    started = time.perf_counter()
    stored = measurements(study.user_attrs)
    outcome = MeasureOutcome(trials=[])
    raw = study.get_trials(deepcopy=False)
    trials = _recalibrated(raw, stored, predictor, outcome)
    for round_ in range(max_rounds + 1):
        if round_ == 0:
            front = pareto_front(trials, budgets=budgets)  # the predicted front, as the sampler saw it
            wanted = front + nearest_to_front(trials, front, near)
        else:  # judged on measurements, and on recalibrated predictions where there is none yet
            wanted = pareto_front(trials, measured=True, budgets=budgets)
        todo = [t for t in wanted if t.number not in stored]
        if not todo:
            if round_ == 0:
                continue  # a resumed search: its measured front may still have members to measure
            break
        if round_ == max_rounds:
            log.warning("%d front member(s) left unmeasured after %d rounds", len(todo), max_rounds)
            break
        log.info("measuring %d candidate(s) whole (round %d)", len(todo), round_ + 1)
        for trial in todo:
            record = measure_one(chain, predictor, trial)
            study.set_user_attr(measurement_key(trial), record)
            stored[trial.number] = record
            outcome.new += 1
            outcome.failed += record.get("latency_ms") is None
        raw = study.get_trials(deepcopy=False)
        trials = _recalibrated(raw, stored, predictor, outcome)
    outcome.trials = trials
    outcome.error = dict(predictor.error())
    outcome.time_s = time.perf_counter() - started
    return outcome


def _recalibrated(
    raw: Sequence[FrozenTrial], stored: dict[int, dict[str, Any]], predictor: LatencyPredictor, outcome: MeasureOutcome
) -> list[FrozenTrial]:
    """``raw`` with their measurements, the predictor recalibrated on every pair, and the unmeasured trials'
    predictions corrected by it (``CORRECTED_LATENCY``)."""
    measured = with_measurements(raw, stored)
    outcome.pairs = _pairs(measured, stored)
    correction = predictor.recalibrate(outcome.pairs)
    corrected = {}
    for t in completed(raw):
        prediction = _raw_prediction(t)
        if t.number not in stored and prediction is not None:
            corrected[t.number] = float(correction.apply(prediction))
    return with_measurements(raw, stored, corrected)


def _pairs(trials: Sequence[FrozenTrial], stored: dict[int, dict[str, Any]]) -> list[tuple[float, float]]:
    """``(raw prediction, measurement)`` of every measured trial (an estimate stands in for no measurement)."""
    pairs = []
    for t in completed(trials):
        record = stored.get(t.number) or {}
        if not is_measured(t) or record.get("source") == "estimated":
            continue
        raw = record.get("predicted_raw_ms")
        raw = float(raw) if isinstance(raw, (int, float)) else _raw_prediction(t)
        if raw is not None:
            pairs.append((raw, float(record["latency_ms"])))
    return pairs
