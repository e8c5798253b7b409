"""The study: where it is stored, which sampler proposes trials, and how a killed search picks up again.

    study = open_study(config, out_dir)           # sqlite:///<out_dir>/study.db unless config.storage
    recover_orphans(study)                        # only where no other process works on this study
    enqueue_seeds(study, chain.space, uniform)    # the uniform setting of each pass, run first

Resume. The storage is an ``RDBStorage`` with a heartbeat: a trial whose process died (``kill -9``, a lost
machine) stops beating, is marked FAIL once ``GRACE_PERIOD_S`` passed, and ``RetryHeartbeatStaleTrialCallback``
(Optuna 5.0's name for ``RetryFailedTrialCallback``) enqueues its assignment again. ``recover_orphans`` does the
same at once, for a run that knows it is alone on the study (the default SQLite file in a locked output folder,
before its workers start). A trial that died is *lost*: FAIL without the ``failure`` note a candidate that
failed gets (``objective.FAILURE``); it does not count towards the trial target.

Determinism. A seeded sampler's random state moves on with every trial, so a process that starts again would
draw differently from one that never stopped. ``make_sampler`` therefore gives each trial a sampler of its own,
seeded with ``(seed, ordinal)`` where the ordinal is the trial's place among the trials that count (lost ones
left out): a resumed search sees the same history at each ordinal and draws the same assignment, so with one
process it ends with the same trials as a run never stopped. Rebuilding the sampler per trial costs nothing for
TPE and NSGA-II/III (they keep their state in the study); the GP sampler loses its warm start for kernel fitting.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from repfx_deploy.errors import InputError, RecipeError
from repfx_deploy.search.config import SearchConfig

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.samplers import BaseSampler
    from optuna.trial import FrozenTrial, TrialState

    from repfx_deploy.passes.chain import RecipeSpace
    from repfx_deploy.passes.protocol import Choice

# A trial beats every HEARTBEAT_INTERVAL_S; one silent for GRACE_PERIOD_S is taken for dead. The grace is
# generous because a candidate's TVM build can hold the GIL (and so the heartbeat thread) for a while.
HEARTBEAT_INTERVAL_S = 15
GRACE_PERIOD_S = 120
# A trial that dies again and again (it kills its worker: out of memory) is given up after this many retries.
MAX_RETRY = 2
# SQLite locks the whole file per write; workers on one file wait this long for each other before giving up.
SQLITE_TIMEOUT_S = 60

ASSIGNMENT = "assignment"  # user_attr: the trial's whole assignment, set once every site is chosen
FAILURE = "failure"  # user_attr: why the candidate failed (objective.py sets it)
SURPLUS = "surplus"  # user_attr: a trial started past the target by a worker racing another (run_study)
STUDY_BUDGETS = "budgets"  # study user_attr: the budgets the study's constraints were computed with


def storage_url(config: SearchConfig, out_dir: Path) -> str:
    """``config.storage``, or the SQLite file ``study.db`` in ``out_dir``."""
    return config.storage or f"sqlite:///{(Path(out_dir) / 'study.db').resolve()}"


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """An ``RDBStorage`` on ``url`` with the heartbeat and the retry of dead trials (see the module docstring)."""
    import optuna
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True  # a server restarted between trials is reconnected to
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: experimental since 2.x
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=retry_lost_trial,
            )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
            raise InputError(
                f"The study storage {_redacted(url)} cannot be opened: {e}.",
                "Check the URL (sqlite:///PATH or postgresql://USER@HOST:PORT/DB), that the server runs and the "
                "database exists, and that psycopg2 is installed for PostgreSQL (pip install repfx-deploy[postgres]).",
            ) from e


def _redacted(url: str) -> str:
    """``url`` without a password, for messages."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


def retry_lost_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue ``trial``'s assignment again, as ``RetryHeartbeatStaleTrialCallback`` does, but only when the
    trial got as far as choosing its whole assignment (``ASSIGNMENT`` set): a trial that died while
    choosing is better drawn afresh, which, seeded by its ordinal, draws the same assignment."""
    import optuna

    if ASSIGNMENT not in trial.user_attrs:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def open_study(
    config: SearchConfig,
    out_dir: Path,
    directions: Sequence[Literal["maximize", "minimize"]] = ("maximize", "minimize"),
) -> optuna.Study:
    """The study ``config.study_name`` in its storage, created or, when it exists, loaded to go on with.

    Objectives: accuracy (maximized), latency_ms (minimized). The budgets are the study's constraints, so a
    study made under other budgets is refused (its trials' feasibility would mean something else)."""
    import optuna

    if config.storage is None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    storage = make_storage(storage_url(config, out_dir))
    with quiet_optuna():
        study = optuna.create_study(
            storage=storage,
            study_name=config.study_name,
            sampler=make_sampler(config),
            directions=list(directions),
            load_if_exists=True,
        )
    budgets = [str(b) for b in config.budgets]
    stored = study.user_attrs.get(STUDY_BUDGETS)
    if stored is None:
        study.set_user_attr(STUDY_BUDGETS, budgets)
    elif sorted(stored) != sorted(budgets):
        raise InputError(
            f"The study {config.study_name!r} in {_redacted(storage_url(config, out_dir))} was made with the "
            f"budgets {', '.join(stored) or 'none'}, not {', '.join(budgets) or 'none'}.",
            "Give the same --budget to resume it, or start another study (a new output folder or --study-name).",
        )
    return study


def make_sampler(config: SearchConfig) -> BaseSampler:
    """The sampler ``config.sampler`` names, seeded with ``config.seed`` per trial (see the module docstring).

    Budgets reach every one of them through ``trial.set_constraint``: TPE puts infeasible trials in its "bad"
    group, NSGA-II/III rank by constrained domination, GP models each constraint and weighs its acquisition by
    the chance of feasibility. A candidate that failed is a FAIL trial, which no sampler learns from; a model
    based sampler (GP above all) would propose it again and again, so a proposal equal to a failed assignment is
    replaced by a random one (seeded too)."""
    factory = _factories(config)[config.sampler]
    return _ordinal_seeded_class()(factory, config.seed)  # type: ignore[call-arg]  # its own __init__


def _factories(config: SearchConfig) -> dict[str, Callable[[int], BaseSampler]]:
    import optuna.samplers as samplers

    # A short search must leave the samplers room to learn: their defaults (10 random trials, generations of
    # 50) would make a 40-trial search all random. A quarter of the trials, at least 4, goes to exploring.
    startup = max(4, min(10, config.trials // 4))
    population = max(4, min(50, config.trials // 4))
    return {
        "tpe": lambda seed: samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True),
        "nsga2": lambda seed: samplers.NSGAIISampler(seed=seed, population_size=population),
        "nsga3": lambda seed: samplers.NSGAIIISampler(seed=seed, population_size=population),
        # the proxy score of an assignment is cached, so the same point never gives two values
        "gp": lambda seed: samplers.GPSampler(seed=seed, n_startup_trials=startup, deterministic_objective=True),
    }


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines (a study created, each trial) and experimental-feature warnings held back while the
    block runs: the progress bar and the search's own log say what matters, without tracebacks."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _failed_before(study: optuna.Study, params: Mapping[str, Any]) -> bool:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if FAILURE in t.user_attrs and all(t.params.get(k, _MISSING) == v for k, v in params.items()):
            return True
    return False


_MISSING = object()


@functools.cache
def _ordinal_seeded_class() -> type[BaseSampler]:
    """``OrdinalSeededSampler``, defined on first use so that importing this module does not import Optuna."""
    import numpy as np
    from optuna.samplers import BaseSampler, RandomSampler

    class OrdinalSeededSampler(BaseSampler):
        """Delegates to a sampler made afresh for each trial, seeded with ``(seed, ordinal)``; a joint proposal
        equal to a failed assignment is replaced by a random one."""

        def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
            self._factory = factory
            self._seed = seed
            with quiet_optuna():
                self._inner: BaseSampler = factory(seed)
            self._random = RandomSampler(seed=seed)
            self._randomized = False

        def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
            ordinal = trial_ordinal(study, trial.number)
            inner_seed, random_seed = (int(x) for x in np.random.SeedSequence([self._seed, ordinal]).generate_state(2))
            with quiet_optuna():
                self._inner = self._factory(inner_seed)
            self._random = RandomSampler(seed=random_seed)
            self._randomized = False
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(
            self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
        ) -> dict[str, Any]:
            params = self._inner.sample_relative(study, trial, search_space)
            if params and _failed_before(study, params):
                self._randomized = True  # every site of this trial is then drawn by the random sampler
                return {}
            return params

        def sample_independent(
            self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
        ) -> Any:
            sampler = self._random if self._randomized else self._inner
            return sampler.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(
            self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
        ) -> None:
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            pass  # each trial's seed is fixed by its ordinal; Optuna calls this only for threaded n_jobs

        def __repr__(self) -> str:
            return f"OrdinalSeededSampler({type(self._inner).__name__}, seed={self._seed})"

    return OrdinalSeededSampler


def is_lost(trial: FrozenTrial) -> bool:
    """A trial that died (killed, interrupted) or was a racing worker's surplus: FAIL without a ``failure``."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and FAILURE not in trial.user_attrs


def counts(trial: FrozenTrial) -> bool:
    """Whether ``trial`` counts towards the trial target: finished (a failed candidate too) or running."""
    from optuna.trial import TrialState

    return trial.state != TrialState.WAITING and not is_lost(trial)


def trial_ordinal(study: optuna.Study, number: int) -> int:
    """How many trials that count came before trial ``number``: its place in the search."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and counts(t))


def trials_done(study: optuna.Study) -> int:
    """Trials that finished and count: COMPLETE, and candidates that failed (FAIL with a ``failure``)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts(t))


def is_feasible(trial: FrozenTrial) -> bool:
    """Every constraint of ``trial`` (``trial.constraints``, one per budget) is <= 0; no constraint: feasible."""
    return all(v <= 0.0 for v in trial.constraints.values())


def best_feasible_accuracy(study: optuna.Study) -> float | None:
    """The highest accuracy among the COMPLETE trials within every budget, or None while there is none."""
    from optuna.trial import TrialState

    values = [
        t.values[0]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and is_feasible(t)
    ]
    return max(values) if values else None


def recover_orphans(study: optuna.Study) -> list[int]:
    """Mark every RUNNING trial FAIL and enqueue its assignment again; the numbers of those trials.

    Only for a run that knows no other process works on the study (the default SQLite file, in an output
    folder the command has locked, before its workers start): a trial still RUNNING there belongs to a process
    that died. Without this a rerun right after ``kill -9`` would wait ``GRACE_PERIOD_S`` for the heartbeat to
    give the trial up, and the sampler would meanwhile see it running."""
    import copy

    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage  # Optuna has no public call that fails a trial of another process
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # it finished meanwhile: not an orphan after all
        retry_lost_trial(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
        recovered.append(trial.number)
    return recovered


def enqueue_seeds(study: optuna.Study, space: RecipeSpace, seeds: Sequence[Mapping[str, Choice]]) -> int:
    """Enqueue each of ``seeds`` (the uniform setting of each pass), completed with the space's defaults, to be
    run before the sampler proposes anything; one already in the study (any state) is not enqueued again, so a
    resumed search does not repeat them. Returns how many were enqueued. ``RecipeError`` for a key or a choice
    the space does not have."""
    sites = {f"{p}/{s.name}": s for p, sp in zip(space.prefixes, space.spaces) for s in sp.sites}
    before = len(study.get_trials(deepcopy=False))
    for seed in seeds:
        params = dict(space.defaults())
        for key, choice in seed.items():
            site = sites.get(key)
            if site is None:
                raise RecipeError(f"The seed assignment names {key!r}, not a site of the recipe's passes.")
            if choice not in site.choices:
                raise RecipeError(
                    f"The seed assignment gives {key!r} the choice {choice!r}.",
                    f"Use one of {list(site.choices)}.",
                )
            params[key] = choice
        with quiet_optuna():  # Optuna logs each seed it skips
            study.enqueue_trial(params, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before
