"""``--strategy greedy``: a NetAdapt-style reference strategy, shrinking one site per step.

    path = greedy_search(scorer, chain.space, config, study=study)   # the accepted steps, dense first
    run = run_greedy(scorer, chain.space, config, study=study)       # the same, with why it stopped

The loop starts from the dense assignment (every site at the choice that leaves it as it was: all channels,
full rank, float; a site without one at its largest choice). Each step proposes, for every site tried, the
assignment with that one site one choice smaller, scores each proposal, and keeps the one that loses the least
accuracy per unit of resource saved. It stops when every budget is met (``Budget.violation(value) <= 0``), when
no proposal saves anything, at ``config.trials`` or at ``config.time_budget_s``.

- One choice smaller: a site's choices are ascending towards its dense choice, which is last. A low-rank site
  with two schemes (``8``, ``16``, ``"spatial:8"``, ``"spatial:16"``, ``"dense"``) has a chain per scheme,
  each ending at dense: from dense both tops are proposed, from inside a chain its next smaller rank.
- Resource saved: the drop in the summed violation of the budgets still unmet (relative, so budgets of other
  units weigh alike; going below a limit earns nothing more). With no budget at all, the relative drop in
  latency, and the loop traces the accuracy/latency curve until the trials run out or nothing shrinks.
- Sites tried per step: ``sites_per_step`` of them (default 16, so a ResNet-56 space of ~86 sites costs 16
  trials a step, not 86), drawn seeded by ``config.seed`` and the step; ``None`` tries every site. When none
  of those saves anything the step draws more, so a step gives up only once every site was tried.

Every scored proposal is a trial of ``study`` as the optuna strategy stores it (objective.py): params the whole
assignment, values ``(accuracy, latency_ms)``, one constraint per budget, user_attrs ``assignment``,
``size_bytes``, ``latency_source``, ``details``, ``score_time_s``, and ``strategy`` "greedy", ``greedy_step``,
``greedy_site``; a proposal that fails is a FAIL trial with ``failure``. So the front, the feasibility and the
report treat greedy trials like any other. The study's user_attrs ``greedy_path`` (the accepted trials'
numbers) and ``greedy_stopped_by`` say which trials the greedy path went through.

An assignment is never scored twice: proposals already in the study (an earlier run of the same command, cut
short) are reused, so a rerun replays its path and goes on, and the trial target counts the study's trials as
``run_study`` does. The loop runs in one process (``--workers`` does not apply to it).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from repfx_deploy.errors import InputError, SearchError
from repfx_deploy.report.strict_json import finite
from repfx_deploy.search.config import Budget, SearchConfig
from repfx_deploy.search.objective import Score, Scorer, failure_reason
from repfx_deploy.search.study import ASSIGNMENT, FAILURE, counts

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from repfx_deploy.passes.chain import RecipeSpace
    from repfx_deploy.passes.protocol import Choice, Site

log = logging.getLogger(__name__)

SITES_PER_STEP = 16
STRATEGY = "greedy"
GREEDY_STEP = "greedy_step"  # user_attr: the step that proposed the trial (0: the dense start)
GREEDY_SITE = "greedy_site"  # user_attr: the site the proposal shrank (None for the start)
GREEDY_PATH = "greedy_path"  # study user_attr: numbers of the trials the path accepted, dense first
GREEDY_STOPPED_BY = "greedy_stopped_by"  # study user_attr: why the last greedy run stopped

StoppedBy = Literal["budget", "exhausted", "target", "time_budget"]


@dataclass(frozen=True)
class GreedyStep:
    """One accepted assignment of the path: ``step`` 0 is the dense start; ``site`` the key it shrank (None for
    the start); ``ratio`` accuracy lost per resource saved (None for the start); ``trial_number`` in the study
    (None without one)."""

    step: int
    assignment: dict[str, Choice]
    score: Score
    site: str | None = None
    ratio: float | None = None
    trial_number: int | None = None


@dataclass(frozen=True)
class GreedyRun:
    """How ``run_greedy`` ended: the ``path`` (empty only when the trial target left no room for the start),
    ``stopped_by`` "budget" (every budget met), "exhausted" (no proposal saved anything), "target" (the trial
    count) or "time_budget"; ``scored`` proposals this call scored; ``trials_done`` counting in the study (or
    scored, without one)."""

    path: tuple[GreedyStep, ...]
    stopped_by: StoppedBy
    scored: int
    trials_done: int
    time_s: float = 0.0

    @property
    def final(self) -> GreedyStep | None:
        return self.path[-1] if self.path else None


def greedy_search(
    scorer: Scorer,
    space: RecipeSpace,
    config: SearchConfig,
    study: optuna.Study | None = None,
    *,
    sites_per_step: int | None = SITES_PER_STEP,
) -> list[GreedyStep]:
    """The accepted path from the dense assignment to the first one within every budget (see the module
    docstring); ``run_greedy`` says also why it stopped."""
    return list(run_greedy(scorer, space, config, study, sites_per_step=sites_per_step).path)


def run_greedy(
    scorer: Scorer,
    space: RecipeSpace,
    config: SearchConfig,
    study: optuna.Study | None = None,
    *,
    sites_per_step: int | None = SITES_PER_STEP,
) -> GreedyRun:
    """Run the greedy loop (see the module docstring). ``SearchError`` when the dense start itself fails (a
    broken setup: nothing can be shrunk from a candidate that cannot be built); ``InputError`` for a bad
    ``sites_per_step``. SIGINT/SIGTERM (``KeyboardInterrupt``) goes on to the caller: every scored proposal is
    in the study already, only the one in flight is lost."""
    if sites_per_step is not None and (
        isinstance(sites_per_step, bool) or not isinstance(sites_per_step, int) or sites_per_step < 1
    ):
        raise InputError(f"sites_per_step must be an integer >= 1 or None, got {sites_per_step!r}.", "Use e.g. 16.")
    started = time.monotonic()
    deadline = None if config.time_budget_s is None else started + config.time_budget_s
    sites = site_table(space)
    book = _Book(scorer, sites, config, study)
    path: list[GreedyStep] = []

    def finish(stopped_by: StoppedBy) -> GreedyRun:
        if study is not None:
            study.set_user_attr(GREEDY_STOPPED_BY, stopped_by)
        log.info(
            "greedy search stopped (%s) after %d step(s), %d proposal(s) scored", stopped_by, len(path), book.scored
        )
        return GreedyRun(tuple(path), stopped_by, book.scored, book.taken, time.monotonic() - started)

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    current = dense_assignment(space)
    if book.lookup(current) is None and book.full():
        return finish("target")
    start = book.score(current, step=0, site=None)
    if start.failure is not None:
        raise SearchError(
            f"The dense starting point of the greedy search failed: {start.failure}",
            "Fix that cause (the recipe's passes, the data, the target) and run the same command again.",
        )
    assert start.score is not None
    path.append(GreedyStep(0, dict(current), start.score, trial_number=start.trial_number))
    book.publish(path)
    while True:
        if _met(path[-1].score, config.budgets):
            return finish("budget")
        step = len(path)
        best, stopped = _best_proposal(book, sites, path[-1], config, step, sites_per_step, out_of_time)
        if best is not None:
            path.append(GreedyStep(step, best.assignment, best.score, best.site, best.ratio, best.trial_number))
            book.publish(path)
            log.info("greedy step %d: %s -> %r (ratio %.4g)", step, best.site, best.assignment[best.site], best.ratio)
        if stopped is not None:
            return finish("budget" if _met(path[-1].score, config.budgets) else stopped)
        if best is None:
            return finish("exhausted")


@dataclass(frozen=True)
class _Proposal:
    site: str
    assignment: dict[str, Choice]
    score: Score
    saved: float
    ratio: float
    trial_number: int | None

    def beats(self, other: _Proposal | None) -> bool:
        """Less accuracy lost per resource saved; on a tie, more saved (then the earlier site stays)."""
        return other is None or (self.ratio, -self.saved) < (other.ratio, -other.saved)


def _best_proposal(
    book: _Book,
    sites: Mapping[str, Site],
    here: GreedyStep,
    config: SearchConfig,
    step: int,
    sites_per_step: int | None,
    out_of_time: Callable[[], bool],
) -> tuple[_Proposal | None, StoppedBy | None]:
    """The proposal of this step with the least accuracy lost per resource saved, and, when the trial target or
    the time budget cut the step short, which one (the best of what was scored is still returned)."""
    order = {key: i for i, key in enumerate(sites)}
    proposals = [
        (key, {**here.assignment, key: smaller})
        for key, site in sites.items()
        for smaller in shrink_steps(site, here.assignment[key])
    ]
    # the sites are drawn in an order seeded by the seed and the step, a batch at a time, so a rerun after a kill
    # draws what the first run drew; proposals scored before (by that run) cost nothing and join the first batch
    known = [book.lookup(a) is not None for _, a in proposals]
    drawn_order = sorted({key for key, _ in proposals}, key=order.__getitem__)
    random.Random(f"greedy:{config.seed}:{step}").shuffle(drawn_order)
    size = len(drawn_order) if sites_per_step is None else sites_per_step
    batches = [set(drawn_order[i : i + size]) for i in range(0, len(drawn_order), max(size, 1))] or [set()]
    best: _Proposal | None = None
    done: set[int] = set()
    for number, drawn in enumerate(batches):
        # in space order: the study's trials do not depend on the order of the draw within a batch
        picked = [
            i for i, (key, _) in enumerate(proposals) if i not in done and (key in drawn or (known[i] and number == 0))
        ]
        done.update(picked)
        tried = [proposals[i] for i in picked]
        for key, assignment in tried:
            if book.lookup(assignment) is None:
                if book.full():
                    return best, "target"
                if out_of_time():
                    return best, "time_budget"
            outcome = book.score(assignment, step=step, site=key)
            if outcome.score is None:
                continue
            saved = _saved(here.score, outcome.score, config.budgets)
            if saved <= 0:
                continue
            ratio = (here.score.accuracy - outcome.score.accuracy) / saved
            proposal = _Proposal(key, assignment, outcome.score, saved, ratio, outcome.trial_number)
            if proposal.beats(best):
                best = proposal
        if best is not None:
            return best, None
    return None, None


def _met(score: Score, budgets: tuple[Budget, ...]) -> bool:
    """Every budget is met; with none the loop goes on (it traces the curve, see the module docstring)."""
    return bool(budgets) and all(b.violation(score.metric(b.metric)) <= 0 for b in budgets)


def _saved(here: Score, there: Score, budgets: tuple[Budget, ...]) -> float:
    """The resource ``there`` saves from ``here``: the drop in summed unmet violation, or without budgets the
    relative drop in latency."""
    if not budgets:
        return (here.latency_ms - there.latency_ms) / max(here.latency_ms, 1e-12)

    def unmet(score: Score) -> float:
        return sum(max(0.0, b.violation(score.metric(b.metric))) for b in budgets)

    return unmet(here) - unmet(there)


def site_table(space: RecipeSpace) -> dict[str, Site]:
    """Every site of ``space`` by its assignment key ``"<prefix>/<site>"``, in space order."""
    return {f"{p}/{s.name}": s for p, sp in zip(space.prefixes, space.spaces) for s in sp.sites}


def dense_choice(site: Site) -> Choice:
    """The choice that leaves ``site`` as it was (``unchanged``), else its largest (choices ascend)."""
    if site.unchanged is not None and site.unchanged in site.choices:
        return site.unchanged
    return site.choices[-1]


def dense_assignment(space: RecipeSpace) -> dict[str, Choice]:
    """Every site of ``space`` at its dense choice: the start of the greedy path."""
    return {key: dense_choice(site) for key, site in site_table(space).items()}


def shrink_steps(site: Site, choice: Choice) -> list[Choice]:
    """The choices one step smaller than ``choice`` at ``site``: the top of each chain from the dense choice,
    the next smaller of its chain from any other (none from a chain's smallest)."""
    chains = _chains(site)
    if choice == dense_choice(site):
        return [chain[-1] for chain in chains]
    for chain in chains:
        if choice in chain:
            i = chain.index(choice)
            return [chain[i - 1]] if i > 0 else []
    return []


def _chains(site: Site) -> list[list[Choice]]:
    """The site's choices but the dense one, split by scheme ("spatial:8" is of scheme "spatial"; a plain
    integer or any other value of the first), each in the site's (ascending) order."""
    dense = dense_choice(site)
    chains: dict[str, list[Choice]] = {}
    for choice in site.choices:
        if choice != dense:
            chains.setdefault(_scheme(choice), []).append(choice)
    return list(chains.values())


def _scheme(choice: Choice) -> str:
    if isinstance(choice, str):
        head, sep, tail = choice.partition(":")
        if sep and tail.isdigit():
            return head
    return ""


@dataclass(frozen=True)
class _Outcome:
    score: Score | None
    failure: str | None
    trial_number: int | None


@dataclass
class _Book:
    """Scores by assignment (this run's and the study's), the trials they were stored as, and the count the
    trial target is judged by."""

    scorer: Scorer
    sites: Mapping[str, Site]
    config: SearchConfig
    study: optuna.Study | None
    scored: int = 0
    taken: int = 0
    _seen: dict[tuple[Choice, ...], _Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.study is None:
            return
        trials = self.study.get_trials(deepcopy=False)
        self.taken = sum(1 for t in trials if counts(t))
        for t in trials:
            outcome = _from_trial(t, self.sites)
            if outcome is not None:
                self._seen.setdefault(self._key(t.params), outcome)

    def _key(self, assignment: Mapping[str, Any]) -> tuple[Choice, ...]:
        return tuple(assignment[k] for k in self.sites)

    def lookup(self, assignment: Mapping[str, Choice]) -> _Outcome | None:
        return self._seen.get(self._key(assignment))

    def full(self) -> bool:
        return self.taken >= self.config.trials

    def score(self, assignment: dict[str, Choice], *, step: int, site: str | None) -> _Outcome:
        """The outcome for ``assignment``: the one seen before, or scored now and stored as a trial."""
        seen = self.lookup(assignment)
        if seen is not None:
            return seen
        began = time.perf_counter()
        score: Score | None = None
        failure: str | None = None
        try:
            score = self.scorer.score(assignment)
        except Exception as e:  # this candidate fails; the loop goes on without it (as run_study does)
            failure = failure_reason(e)
            log.warning("Greedy proposal %s failed: %s", site or "dense start", failure)
        attrs: dict[str, Any] = {
            ASSIGNMENT: dict(assignment),
            "strategy": STRATEGY,
            GREEDY_STEP: step,
            GREEDY_SITE: site,
            "score_time_s": time.perf_counter() - began,
        }
        self.scored += 1
        self.taken += 1
        number = (
            None
            if self.study is None
            else _record(self.study, self.sites, self.config, assignment, score, failure, attrs)
        )
        outcome = _Outcome(score, failure, number)
        self._seen[self._key(assignment)] = outcome
        return outcome

    def publish(self, path: list[GreedyStep]) -> None:
        if self.study is not None:
            self.study.set_user_attr(GREEDY_PATH, [s.trial_number for s in path])


def _record(
    study: optuna.Study,
    sites: Mapping[str, Site],
    config: SearchConfig,
    assignment: dict[str, Choice],
    score: Score | None,
    failure: str | None,
    attrs: dict[str, Any],
) -> int | None:
    """Store one proposal as a trial, the way objective.py stores the optuna strategy's; its number."""
    from optuna.distributions import BaseDistribution, CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    distributions: dict[str, BaseDistribution] = {k: CategoricalDistribution(list(s.choices)) for k, s in sites.items()}
    if score is not None:
        attrs = {**attrs, "size_bytes": score.size_bytes, "latency_source": score.latency_source}
        attrs["details"] = finite(score.details)
    trial = create_trial(
        state=TrialState.FAIL if score is None else TrialState.COMPLETE,
        values=None if score is None else [float(score.accuracy), float(score.latency_ms)],
        params=dict(assignment),
        distributions=distributions,
        user_attrs={**attrs, FAILURE: failure} if score is None else attrs,
        constraints=None if score is None else {b.metric: b.violation(score.metric(b.metric)) for b in config.budgets},
    )
    study.add_trial(trial)
    # add_trial returns nothing; this process is the only one adding greedy trials, so the newest match is it
    for t in reversed(study.get_trials(deepcopy=False)):
        if t.user_attrs.get("strategy") == STRATEGY and t.params == assignment:
            return t.number
    return None


def _from_trial(trial: FrozenTrial, sites: Mapping[str, Site]) -> _Outcome | None:
    """What a stored trial says about its assignment: a score (COMPLETE), a failure (FAIL with a reason), or
    nothing (running, lost, or of another space)."""
    from optuna.trial import TrialState

    if set(trial.params) != set(sites):
        return None
    if trial.state == TrialState.FAIL and FAILURE in trial.user_attrs:
        return _Outcome(None, str(trial.user_attrs[FAILURE]), trial.number)
    if trial.state != TrialState.COMPLETE or not trial.values or len(trial.values) < 2:
        return None
    attrs = trial.user_attrs
    try:
        score = Score(
            accuracy=float(trial.values[0]),
            latency_ms=float(trial.values[1]),
            size_bytes=int(attrs.get("size_bytes", 0)),
            latency_source=str(attrs.get("latency_source") or "study"),
            details=dict(attrs.get("details") or {}),
        )
    except (TypeError, ValueError):
        return None  # a trial stored without a usable score is scored afresh
    return _Outcome(score, None, trial.number)
