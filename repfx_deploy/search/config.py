"""What a search is asked to do: its budgets and its settings, validated once, before any work.

    budget = parse_budget("latency_ms=4")          # also "4ms", "4.5ms", "20ms", "2MB", "size_bytes=2e6"
    budget.violation(5.0)                           # 0.25: 25 % over; <= 0 is within the budget
    config = SearchConfig(budgets=(budget,), sampler="nsga2", trials=60, seed=1)

A budget is a constraint of the study, not an objective: the search maximizes accuracy and minimizes latency,
and every trial stores ``budget.violation(value)`` with ``trial.set_constraint`` so the samplers prefer, and the
front keeps, candidates within it. The violation is relative to the limit so that budgets of different units
weigh alike where a sampler sums them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from repfx_deploy.errors import InputError

Metric = Literal["latency_ms", "size_bytes"]
SamplerName = Literal["tpe", "nsga2", "nsga3", "gp"]
Strategy = Literal["optuna", "greedy"]
Runtime = Literal["tvm", "onnxruntime"]

METRICS: tuple[str, ...] = get_args(Metric)
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
RUNTIMES: tuple[str, ...] = get_args(Runtime)

# Units a budget may be written in, as the factor to the metric's own unit. Sizes are decimal ("2MB" = 2e6
# bytes, as disks and model hubs count); the binary units are there for whoever thinks in them.
_LATENCY_UNITS = {"ms": 1.0, "s": 1000.0, "us": 1e-3}
_SIZE_UNITS = {"b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0**2, "gib": 1024.0**3}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_BUDGET_FORMS = "latency_ms=4, 4ms, 4.5ms, 0.02s, size_bytes=2e6, 2MB or 500KiB"


@dataclass(frozen=True)
class Budget:
    """A limit on one metric of the candidate: ``latency_ms`` (milliseconds per inference on the target) or
    ``size_bytes`` (the weights at their bit widths)."""

    metric: Metric
    limit: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InputError(
                f"A budget cannot limit {self.metric!r}.", f"Budget one of: {', '.join(METRICS)} (e.g. latency_ms=4)."
            )
        if isinstance(self.limit, bool) or not isinstance(self.limit, (int, float)):
            raise InputError(f"The {self.metric} budget must be a number, got {self.limit!r}.", "Write e.g. 4 or 2e6.")
        if not math.isfinite(self.limit) or self.limit <= 0:
            raise InputError(
                f"The {self.metric} budget must be a positive finite number, got {self.limit!r}.",
                "Give the limit the candidate must stay within, e.g. latency_ms=4.",
            )

    def violation(self, value: float) -> float:
        """How far ``value`` is over the limit, as a fraction of it: ``(value - limit) / limit``; <= 0 is feasible."""
        return (float(value) - self.limit) / self.limit

    def __str__(self) -> str:
        return f"{self.metric}={self.limit:g}"


def parse_budget(text: str) -> Budget:
    """A budget from the command line: ``METRIC=VALUE`` (``latency_ms=4``, ``size_bytes=2e6``) or a value with a
    unit that names the metric (``20ms``, ``4.5ms``, ``0.02s``, ``2MB``, ``500KiB``). ``InputError`` otherwise."""
    raw = text.strip()
    metric: str | None = None
    value_text = raw
    if "=" in raw:
        metric, _, value_text = (part.strip() for part in raw.partition("="))
        if metric not in METRICS:
            raise InputError(f"Budget {text!r} limits {metric!r}, which is not a metric.", f"Write {_BUDGET_FORMS}.")
    match = _NUMBER_UNIT.match(value_text)
    if match is None:
        raise InputError(f"Budget {text!r} is not a number with a unit.", f"Write {_BUDGET_FORMS}.")
    number, unit = float(match.group(1)), match.group(2).lower()
    if not unit:
        if metric is None:
            raise InputError(f"Budget {text!r} names no metric and no unit.", f"Write {_BUDGET_FORMS}.")
        return Budget(metric, number)  # type: ignore[arg-type]  # checked against METRICS above
    if unit in _LATENCY_UNITS:
        unit_metric, factor = "latency_ms", _LATENCY_UNITS[unit]
    elif unit in _SIZE_UNITS:
        unit_metric, factor = "size_bytes", _SIZE_UNITS[unit]
    else:
        raise InputError(f"Budget {text!r} has an unknown unit {match.group(2)!r}.", f"Write {_BUDGET_FORMS}.")
    if metric is not None and metric != unit_metric:
        raise InputError(
            f"Budget {text!r} gives {metric} in {match.group(2)!r}, a unit of {unit_metric}.", f"Write {_BUDGET_FORMS}."
        )
    return Budget(unit_metric, number * factor)  # type: ignore[arg-type]  # one of the two metrics by construction


def _positive_int(name: str, value: Any, fix: str, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.", fix)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}.", f"Use e.g. {allowed[0]}.")


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of one search. ``storage`` None: a SQLite file ``study.db`` in the output folder, so the
    same command run again resumes the study; ``runtime`` None: the profile's first runtime that compiles
    (tvm when the profile has it)."""

    budgets: tuple[Budget, ...] = ()
    sampler: SamplerName = "tpe"
    strategy: Strategy = "optuna"
    # trials the study holds when the search stops: a rerun with a larger count extends the same study
    trials: int = 40
    time_budget_s: float | None = None
    seed: int = 0
    storage: str | None = None
    study_name: str = "repfx-search"
    workers: int = 1
    top_k: int = 3
    runtime: Runtime | None = None
    # a few hundred samples re-estimate BatchNorm statistics well; more only costs time per trial
    bn_samples: int = 256
    holdout_samples: int = 512
    measure_near_front: int = 2
    finetune_steps: int = 300

    def __post_init__(self) -> None:
        if not isinstance(self.budgets, tuple) or not all(isinstance(b, Budget) for b in self.budgets):
            raise InputError(f"budgets must be a tuple of Budget, got {self.budgets!r}.", "Use parse_budget(...).")
        metrics = [b.metric for b in self.budgets]
        repeated = sorted({m for m in metrics if metrics.count(m) > 1})
        if repeated:
            raise InputError(f"Each metric takes one budget; {', '.join(repeated)} has several.", "Give it once.")
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("strategy", self.strategy, STRATEGIES)
        if self.runtime is not None:
            _choice("runtime", self.runtime, RUNTIMES)
        _positive_int("trials", self.trials, "Use e.g. --trials 40.")
        if self.time_budget_s is not None and (
            isinstance(self.time_budget_s, bool)
            or not isinstance(self.time_budget_s, (int, float))
            or not math.isfinite(self.time_budget_s)
            or self.time_budget_s <= 0
        ):
            raise InputError(
                f"time_budget_s must be a positive number of seconds, got {self.time_budget_s!r}.",
                "Use e.g. --time-budget 1h, or leave it out to stop at the trial count.",
            )
        # numpy's generators take seeds below 2**32; the samplers derive one per trial from this
        _positive_int("seed", self.seed, "Use e.g. --seed 0.", minimum=0)
        if self.seed >= 2**32:
            raise InputError(f"seed must be below 2**32, got {self.seed}.", "Use e.g. --seed 0.")
        if self.storage is not None and (not isinstance(self.storage, str) or "://" not in self.storage):
            raise InputError(
                f"storage must be a database URL, got {self.storage!r}.",
                "Use e.g. sqlite:///study.db or postgresql://user@host/db, or leave it out for study.db in the output folder.",
            )
        if not isinstance(self.study_name, str) or not self.study_name.strip():
            raise InputError(f"study_name must be a non-empty name, got {self.study_name!r}.", "Use e.g. repfx-search.")
        _positive_int("workers", self.workers, "Use e.g. --workers 2 (one process each).")
        _positive_int("top_k", self.top_k, "Use e.g. --top-k 3.")
        _positive_int("bn_samples", self.bn_samples, "Use e.g. 256.")
        _positive_int("holdout_samples", self.holdout_samples, "Use e.g. 512.")
        _positive_int("measure_near_front", self.measure_near_front, "Use 0 to measure the front only.", minimum=0)
        _positive_int("finetune_steps", self.finetune_steps, "Use 0 to skip fine-tuning.", minimum=0)

    def budget(self, metric: str) -> Budget | None:
        """The budget on ``metric``, if there is one."""
        return next((b for b in self.budgets if b.metric == metric), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``from_dict`` reads it back (the worker processes get their config this way)."""
        out = asdict(self)
        out["budgets"] = [{"metric": b.metric, "limit": b.limit} for b in self.budgets]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        fields = dict(data)
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"A search config has unknown keys {unknown}.", "Write it with SearchConfig.to_dict().")
        budgets = fields.pop("budgets", [])
        if not isinstance(budgets, list) or not all(isinstance(b, dict) for b in budgets):
            raise InputError(f"budgets must be a list of tables, got {budgets!r}.", "Write it with to_dict().")
        try:
            parsed = tuple(Budget(b["metric"], b["limit"]) for b in budgets)
        except KeyError as e:
            raise InputError(f"A budget lacks {e.args[0]!r}.", "Give metric and limit.") from e
        return cls(budgets=parsed, **fields)
