"""The Pareto front of a study's trials: accuracy (higher is better) against latency (lower is better).

    front = pareto_front(study.trials)                    # COMPLETE, feasible, non-dominated; fastest first
    near = nearest_to_front(study.trials, front, k=2)     # the k others closest to it, to measure whole too
    feasible = judged_feasible(trial, config.budgets)     # the budgets on the measured latency, once there is one

A trial's objectives are ``trial.values``: ``(accuracy, latency_ms)``, the latency predicted by the scorer.
Once a trial is measured whole (``measure_front``), its ``user_attrs["measured_latency_ms"]`` is the latency
that counts: ``pareto_front(..., measured=True)`` and ``judged_feasible`` use it wherever it is there, so the
budget is never judged on the estimate alone where the target could be reached.

Feasibility before measurement is what the objective stored with ``trial.set_constraint`` (Optuna 5.0's
``trial.constraints``: every value <= 0 is feasible; a trial without constraints is feasible).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

# user_attrs written when a trial is measured whole
MEASURED_LATENCY = "measured_latency_ms"
MEASURED_SOURCE = "measured_latency_source"
MEASURE_ERROR = "measure_error"  # why the whole model could not be built or timed: it cannot be deployed
# an unmeasured trial's prediction corrected by the recalibration the measurements fitted: what it is compared
# with measured trials at, since raw predictions of another kind (a layer table) are off by a common factor
CORRECTED_LATENCY = "corrected_latency_ms"
# A finished trial cannot be changed in Optuna's storage, so measurements are kept as study user attributes
# under this prefix plus the trial number (in the study's storage, so a rerun does not measure them again).
MEASUREMENT_PREFIX = "measured:"


class BudgetLike(Protocol):
    """What ``judged_feasible`` needs of a budget (``search.config.Budget``)."""

    @property
    def metric(self) -> str: ...

    def violation(self, value: float) -> float: ...


def measurements(study_attrs: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """The whole-model measurements stored in a study's user attributes, by trial number."""
    out = {}
    for key, value in study_attrs.items():
        number = key[len(MEASUREMENT_PREFIX) :]
        if key.startswith(MEASUREMENT_PREFIX) and number.isdigit() and isinstance(value, Mapping):
            out[int(number)] = dict(value)
    return out


def measurement_key(trial: FrozenTrial) -> str:
    return f"{MEASUREMENT_PREFIX}{trial.number}"


def with_measurements(
    trials: Iterable[FrozenTrial],
    measured: Mapping[int, Mapping[str, Any]],
    corrected: Mapping[int, float] | None = None,
) -> list[FrozenTrial]:
    """``trials`` with each one's measurement (``{"latency_ms", "source"}``, or ``{"error"}``) in its user_attrs,
    and for the others their recalibrated prediction from ``corrected`` (by trial number), as copies."""
    out = []
    for t in trials:
        m = measured.get(t.number)
        if m is None and corrected and t.number in corrected:
            t = copy.copy(t)
            t.user_attrs = {**t.user_attrs, CORRECTED_LATENCY: float(corrected[t.number])}
        elif m is not None and m.get("latency_ms") is not None:
            t = copy.copy(t)
            t.user_attrs = {**t.user_attrs, MEASURED_LATENCY: m["latency_ms"], MEASURED_SOURCE: m.get("source")}
        elif m is not None and m.get("error"):
            t = copy.copy(t)
            t.user_attrs = {**t.user_attrs, MEASURE_ERROR: m["error"]}
        out.append(t)
    return out


def completed(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that finished with both objectives (finite values), in trial order."""
    from optuna.trial import TrialState

    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.values is not None
        and len(t.values) >= 2
        and all(math.isfinite(v) for v in t.values[:2])
    ]


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint the objective stored is <= 0 (a trial with none is feasible)."""
    return all(v <= 0.0 for v in trial.constraints.values())


def accuracy_of(trial: FrozenTrial) -> float:
    assert trial.values is not None  # callers pass completed trials
    return float(trial.values[0])


def latency_of(trial: FrozenTrial, *, measured: bool = False) -> float:
    """The trial's latency: with ``measured``, the whole-model measurement where there is one, else the
    recalibrated prediction where there is one; otherwise the predicted one (its second objective)."""
    if measured:
        for key in (MEASURED_LATENCY, CORRECTED_LATENCY):
            if trial.user_attrs.get(key) is not None:
                return float(trial.user_attrs[key])
    assert trial.values is not None  # callers pass completed trials
    return float(trial.values[1])


def is_measured(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(MEASURED_LATENCY) is not None


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` = (accuracy, latency) is at least as good as ``b`` in both and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def _point(trial: FrozenTrial, measured: bool) -> tuple[float, float]:
    return accuracy_of(trial), latency_of(trial, measured=measured)


def _key(trial: FrozenTrial) -> tuple:
    """Trials of the same assignment (a cached repeat) are one candidate."""
    return tuple(sorted((k, repr(v)) for k, v in trial.params.items()))


def unique(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """One trial per assignment: the first, in trial order."""
    seen: set[tuple] = set()
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        key = _key(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def pareto_front(
    trials: Iterable[FrozenTrial],
    *,
    measured: bool = False,
    budgets: Sequence[BudgetLike] | None = None,
) -> list[FrozenTrial]:
    """The COMPLETE, feasible trials no other such trial dominates, one per assignment, fastest first.

    Feasible: ``judged_feasible``: the stored constraints, or with ``budgets`` given, the budgets on the measured
    latency where there is one; never a trial whose whole model failed to build. ``measured``: latencies are the
    measured ones where there are.
    """
    pool = [t for t in unique(completed(trials)) if judged_feasible(t, budgets)]
    points = {t.number: _point(t, measured) for t in pool}
    front = [t for t in pool if not any(dominates(points[o.number], points[t.number]) for o in pool)]
    return sorted(front, key=lambda t: (points[t.number][1], -points[t.number][0], t.number))


def nearest_to_front(
    trials: Iterable[FrozenTrial], front: Sequence[FrozenTrial], k: int, *, measured: bool = False
) -> list[FrozenTrial]:
    """The ``k`` COMPLETE trials off ``front`` nearest to it, nearest first.

    Distance is Euclidean in the objectives scaled by their range over the completed trials, to the nearest
    front member. Infeasible trials count too: a candidate just over the budget by its estimate may be under it
    when measured, which is why the ones near the front are measured at all.
    """
    if k <= 0 or not front:
        return []
    on_front = {_key(t) for t in front}
    pool = [t for t in unique(completed(trials)) if _key(t) not in on_front]
    every = [_point(t, measured) for t in completed(trials)]
    span = [max(p[i] for p in every) - min(p[i] for p in every) for i in (0, 1)]
    scale = [s if s > 0 else 1.0 for s in span]

    def distance(t: FrozenTrial) -> float:
        p = _point(t, measured)
        return min(
            math.hypot((p[0] - q[0]) / scale[0], (p[1] - q[1]) / scale[1]) for q in (_point(f, measured) for f in front)
        )

    return sorted(pool, key=lambda t: (distance(t), t.number))[:k]


def budget_value(trial: FrozenTrial, metric: str) -> float | None:
    """The figure a budget on ``metric`` is judged on: for latency the measured one where there is one, else
    the predicted objective; otherwise the score's own figure (``user_attrs[metric]``, or in ``score``)."""
    if metric == "latency_ms":
        return latency_of(trial, measured=True)
    value: Any = trial.user_attrs.get(metric)
    if value is None and isinstance(trial.user_attrs.get("score"), dict):
        value = trial.user_attrs["score"].get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def violations(trial: FrozenTrial, budgets: Sequence[BudgetLike]) -> dict[str, float]:
    """Each budget's violation ((value - limit) / limit, <= 0 within) as judged now (``budget_value``); a
    budget whose figure the trial lacks falls back to the constraint the objective stored for its metric."""
    out = {}
    for budget in budgets:
        value = budget_value(trial, budget.metric)
        if value is not None:
            out[budget.metric] = float(budget.violation(value))
        elif budget.metric in trial.constraints:
            out[budget.metric] = float(trial.constraints[budget.metric])
    return out


def judged_feasible(trial: FrozenTrial, budgets: Sequence[BudgetLike] | None) -> bool:
    """Whether ``trial`` is within every budget, latency judged on its whole-model measurement where it has
    one (the estimate alone never decides then). Without budgets: the stored constraints. A trial whose whole
    model could not be built or timed (``MEASURE_ERROR``) is never feasible: it cannot be deployed."""
    if trial.user_attrs.get(MEASURE_ERROR):
        return False
    if not budgets:
        return is_feasible(trial)
    return all(v <= 0.0 for v in violations(trial, budgets).values())


def most_accurate(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The most accurate of ``trials`` (the faster on a tie, then the earlier), or ``None``."""
    pool = list(trials)
    if not pool:
        return None
    return min(pool, key=lambda t: (-accuracy_of(t), latency_of(t, measured=True), t.number))
