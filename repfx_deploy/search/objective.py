"""One trial of the search: choose an assignment, score the candidate, store what was found.

    objective = Objective(scorer, chain.space, config)      # scorer: anything with score(assignment) -> Score
    run = run_study(study, objective, config, progress=True) # until config.trials trials, or the time budget

A trial returns ``(accuracy, latency_ms)`` (maximized, minimized) and stores, as user_attrs, ``assignment``
(every site's choice), ``size_bytes``, ``latency_source``, ``details`` (the scorer's JSON-ready extras),
``score_time_s``, ``worker`` (HOST:PID that ran it) and, for an assignment scored before, ``cached_from`` (the trial it reused). Each budget is a
constraint, ``trial.set_constraint(budget.metric, budget.violation(value))``.

A candidate that fails (it cannot be applied, exported, compiled, or the scorer raises anything else) is a FAIL
trial whose user_attr ``failure`` says why; the search goes on. A trial without that note that is FAIL died
(study.py: it is *lost*, and does not count).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from repfx_deploy.errors import RepfxError, SearchError
from repfx_deploy.report.strict_json import finite
from repfx_deploy.search.config import SearchConfig
from repfx_deploy.search.study import (
    ASSIGNMENT,
    FAILURE,
    SURPLUS,
    best_feasible_accuracy,
    counts,
    quiet_optuna,
    retry_lost_trial,
    trial_ordinal,
    trials_done,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from repfx_deploy.passes.chain import RecipeSpace
    from repfx_deploy.passes.protocol import Choice

log = logging.getLogger(__name__)

CACHED_FROM = "cached_from"
WORKER = "worker"  # user_attr: HOST:PID of the process that ran the trial
# user_attrs a reused trial copies from the one it reuses
SCORE_ATTRS = ("size_bytes", "latency_source", "details", "score_time_s")
# A search whose first candidates all fail has a broken setup (a pass that never applies, a scorer that
# cannot run), not unlucky candidates: it stops with the first reason instead of burning every trial.
FAILURES_BEFORE_STOP = 5
MAX_REASON_CHARS = 2000
# With the target taken but trials still running in other workers, a worker polls the study this often, for at
# most this long (well past the heartbeat's grace period, after which a dead worker's trial is enqueued again).
WAIT_POLL_S = 2.0
WAIT_LIMIT_S = 600.0


@dataclass(frozen=True)
class Score:
    """What a scorer found for one candidate. ``accuracy`` on the held-out split (higher is better),
    ``latency_ms`` on the target, ``size_bytes`` of the weights at their bit widths, ``latency_source`` where
    the latency came from ("lut-ort", "lut-tvm", "estimated", "measured-local", ...), ``details`` JSON-ready
    extras (macs, params, time split)."""

    accuracy: float
    latency_ms: float
    size_bytes: int
    latency_source: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a scorer's bug, not the user's: plain ValueErrors, which the objective records as the trial's failure
        if not isinstance(self.accuracy, (int, float)) or not math.isfinite(self.accuracy):
            raise ValueError(f"a score needs a finite accuracy, got {self.accuracy!r}")
        if not isinstance(self.latency_ms, (int, float)) or not math.isfinite(self.latency_ms) or self.latency_ms < 0:
            raise ValueError(f"a score needs a finite latency_ms >= 0, got {self.latency_ms!r}")
        if isinstance(self.size_bytes, bool) or not isinstance(self.size_bytes, int) or self.size_bytes < 0:
            raise ValueError(f"a score needs an integer size_bytes >= 0, got {self.size_bytes!r}")
        if not self.latency_source:
            raise ValueError("a score needs the latency's source")

    def metric(self, name: str) -> float:
        """The value a budget on ``name`` ("latency_ms", "size_bytes") limits."""
        if name == "latency_ms":
            return float(self.latency_ms)
        if name == "size_bytes":
            return float(self.size_bytes)
        raise ValueError(f"no metric {name!r}")


class Scorer(Protocol):
    """Scores one assignment of the recipe's space (``"<prefix>/<site>"`` -> choice); raises for a candidate
    that cannot be built or scored."""

    def score(self, assignment: dict[str, Choice]) -> Score: ...


def failure_reason(exc: BaseException) -> str:
    """One line for the trial's ``failure`` note: a ``RepfxError``'s problem and fix, else the exception."""
    text = str(exc) if isinstance(exc, RepfxError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


class Objective:
    """Optuna's objective for ``space``, scored by ``scorer``, constrained by ``config.budgets``."""

    def __init__(self, scorer: Scorer, space: RecipeSpace, config: SearchConfig) -> None:
        self.scorer = scorer
        self.space = space
        self.config = config
        self._sites = [
            (f"{p}/{s.name}", list(s.choices)) for p, sp in zip(space.prefixes, space.spaces) for s in sp.sites
        ]

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:
            return self._trial(trial)
        except Exception as e:  # any failure of this candidate; the search goes on (run_study catches it)
            if FAILURE not in trial.user_attrs:
                trial.set_user_attr(FAILURE, failure_reason(e))
            raise

    def _trial(self, trial: optuna.Trial) -> tuple[float, float]:
        # the choices are ints and strs, so Optuna hands back the same types (its signature says any categorical)
        assignment: dict[str, Choice] = {
            key: trial.suggest_categorical(key, choices)  # type: ignore[misc]
            for key, choices in self._sites
        }
        trial.set_user_attr(ASSIGNMENT, assignment)
        earlier = _scored_before(trial.study, assignment)
        if earlier is not None:
            return _reuse(trial, earlier)
        started = time.perf_counter()
        score = self.scorer.score(assignment)
        trial.set_user_attr("score_time_s", time.perf_counter() - started)
        trial.set_user_attr("size_bytes", score.size_bytes)
        trial.set_user_attr("latency_source", score.latency_source)
        trial.set_user_attr("details", finite(score.details))
        for budget in self.config.budgets:
            trial.set_constraint(budget.metric, budget.violation(score.metric(budget.metric)))
        return float(score.accuracy), float(score.latency_ms)

    def check_study(self, study: optuna.Study) -> None:
        """``SearchError`` when ``study`` was made for another space: Optuna refuses a site whose choices
        changed, so every trial would fail."""
        for t in study.get_trials(deepcopy=False):
            for key, choices in self._sites:
                dist = t.distributions.get(key)
                if dist is not None and list(getattr(dist, "choices", ())) != choices:
                    raise SearchError(
                        f"The study {study.study_name!r} was made for another search space: site {key!r} had the "
                        f"choices {list(getattr(dist, 'choices', ()))}, the recipe now gives {choices}.",
                        "Resume it with the same recipe and target, or start another study (a new output folder or "
                        "--study-name).",
                    )


def _scored_before(study: optuna.Study, assignment: dict[str, Choice]) -> FrozenTrial | None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.params == assignment and t.values is not None:
            return t
    return None


def _reuse(trial: optuna.Trial, earlier: FrozenTrial) -> tuple[float, float]:
    """The earlier trial's score for the same assignment, stored on this trial too."""
    trial.set_user_attr(CACHED_FROM, earlier.user_attrs.get(CACHED_FROM, earlier.number))
    for key in SCORE_ATTRS:
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    for key, value in earlier.constraints.items():
        trial.set_constraint(key, value)
    accuracy, latency_ms = earlier.values[:2]
    return float(accuracy), float(latency_ms)


class _Surplus(Exception):
    """A trial started past the target (two workers took the last one at once); it is dropped."""


@dataclass(frozen=True)
class StudyRun:
    """How a ``run_study`` call ended: ``trials_done`` in the study (lost trials left out), ``ran`` by this
    call, ``stopped_by`` "target" (the trial count reached) or "time_budget"."""

    trials_done: int
    ran: int
    stopped_by: Literal["target", "time_budget"]
    time_s: float


def run_study(study: optuna.Study, objective: Objective, config: SearchConfig, progress: bool = False) -> StudyRun:
    """Run trials until the study holds ``config.trials`` that count (other workers' included) or
    ``config.time_budget_s`` has passed; with ``progress``, a bar on stderr (trials done / total, best feasible
    accuracy, time left).

    When the rest of the target is in flight in other workers, this one waits for them (a dead worker's trial
    is enqueued again once its heartbeat is stale, and then run here). The time budget is checked between
    trials, so the trial in flight finishes and is kept. SIGINT/SIGTERM (a
    ``KeyboardInterrupt``) stops at once: the trial in flight is lost, its assignment enqueued again so a rerun
    starts with it, and the exception goes on to the caller; every finished trial is in the storage already.
    ``SearchError`` when the first ``FAILURES_BEFORE_STOP`` candidates all fail and none ever succeeded."""
    import optuna

    started = time.monotonic()
    deadline = None if config.time_budget_s is None else started + config.time_budget_s
    ran = 0
    failures: list[str] = []

    worker = f"{socket.gethostname()}:{os.getpid()}"

    def one_trial(trial: optuna.Trial) -> tuple[float, float]:
        if trial_ordinal(study, trial.number) >= config.trials:
            trial.set_user_attr(SURPLUS, True)
            raise _Surplus()
        trial.set_user_attr(WORKER, worker)
        try:
            return objective(trial)
        except KeyboardInterrupt:
            retry_lost_trial(study, study._storage.get_trial(trial._trial_id))
            raise

    def finished(_: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran
        if trial.user_attrs.get(SURPLUS):
            return
        ran += 1
        if FAILURE in trial.user_attrs:
            failures.append(trial.user_attrs[FAILURE])
            log.warning("Trial %d failed: %s", trial.number, trial.user_attrs[FAILURE])
        else:
            failures.clear()

    stopped_by: Literal["target", "time_budget"] = "target"
    objective.check_study(study)
    # Optuna logs each trial, and each failure with its traceback; the bar and the warning above say it instead
    with quiet_optuna():
        with progress_bar(study, config, started, enabled=progress) as update:
            waiting_since: float | None = None
            while True:
                update()
                if deadline is not None and time.monotonic() >= deadline:
                    stopped_by = "time_budget"
                    break
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial comes back as WAITING
                if _taken(study) >= config.trials:
                    if trials_done(study) >= config.trials:
                        break
                    # the last trials run in other workers: wait for them, since one whose worker died is
                    # enqueued again once its heartbeat is stale, and someone has to run it then
                    waiting_since = waiting_since or time.monotonic()
                    if time.monotonic() - waiting_since > WAIT_LIMIT_S:
                        log.warning("Stopped waiting for the trials other workers are running.")
                        break
                    time.sleep(WAIT_POLL_S)
                    continue
                waiting_since = None
                study.optimize(one_trial, n_trials=1, catch=(Exception,), callbacks=[finished], gc_after_trial=False)
                if len(failures) >= FAILURES_BEFORE_STOP and not _any_complete(study):
                    raise SearchError(
                        f"The first {len(failures)} candidates all failed; the first because: {failures[0]}",
                        "Fix that cause (the recipe's passes, the data, the target) and run the same command again.",
                    )
    return StudyRun(trials_done(study), ran, stopped_by, time.monotonic() - started)


def _taken(study: optuna.Study) -> int:
    """Trials that count, finished or in flight in another worker: the ones the target is reached with."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


def _any_complete(study: optuna.Study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


@contextlib.contextmanager
def progress_bar(
    study: optuna.Study, config: SearchConfig, started: float, *, enabled: bool = True
) -> Iterator[Callable[[], None]]:
    """A rich bar on stderr while the block runs; the block calls what it yields to redraw it from the study
    (trials done / total, best feasible accuracy so far, time left). ``started``: ``time.monotonic()`` when the
    search began. Disabled: a no-op."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True, highlight=False, markup=False, emoji=False)
    columns = (
        TextColumn("search", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}", markup=False),
        TextColumn("{task.fields[left]}", markup=False),
    )
    first = trials_done(study)
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("search", total=config.trials, best="", left="")

        def update() -> None:
            done = trials_done(study)
            best = best_feasible_accuracy(study)
            bar.update(
                task,
                completed=min(done, config.trials),
                best="best feasible accuracy -" if best is None else f"best feasible accuracy {best:.4f}",
                left=_time_left(config, started, done - first, config.trials - done),
            )

        yield update
        update()


def _time_left(config: SearchConfig, started: float, ran: int, remaining: int) -> str:
    elapsed = time.monotonic() - started
    lefts = []
    if ran > 0:
        lefts.append(elapsed / ran * max(remaining, 0))
    if config.time_budget_s is not None:
        lefts.append(max(config.time_budget_s - elapsed, 0.0))
    if not lefts:
        return "time left -"
    seconds = int(min(lefts))
    hours, rest = divmod(seconds, 3600)
    return f"time left {hours}h{rest // 60:02d}m" if hours else f"time left {rest // 60}m{rest % 60:02d}s"
