"""The greedy (NetAdapt-style) strategy on a fake problem whose score is a pure function of the assignment: it
meets a reachable budget, never scores an assignment twice, stores every proposal as a study trial the way the
optuna strategy does, and stops at the trial target, the time budget, or when nothing shrinks."""

from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from repfx_deploy.errors import InputError, PassError, SearchError
from repfx_deploy.passes.chain import RecipeSpace
from repfx_deploy.passes.protocol import SearchSpace, Site
from repfx_deploy.search import greedy
from repfx_deploy.search.config import Budget, SearchConfig
from repfx_deploy.search.greedy import (
    GREEDY_PATH,
    GREEDY_SITE,
    GREEDY_STEP,
    GREEDY_STOPPED_BY,
    dense_assignment,
    greedy_search,
    run_greedy,
    shrink_steps,
)
from repfx_deploy.search.objective import Score
from repfx_deploy.search.study import ASSIGNMENT, FAILURE, is_feasible

WIDTHS = (4, 8, 12, 16)
# latency per channel kept of each site, and accuracy lost per channel pruned: "c" is cheap to prune, "a" dear
LATENCY = {"prune/a": 0.1, "prune/b": 0.2, "prune/c": 0.4}
SENSITIVITY = {"prune/a": 0.02, "prune/b": 0.005, "prune/c": 0.001}
BITS_LATENCY = {4: 0.1, 8: 0.2, "float": 0.6}


def _space(names=("a", "b", "c")) -> RecipeSpace:
    prune = SearchSpace("prune", tuple(Site(n, "channels_kept", WIDTHS, 8, unchanged=16) for n in names))
    quantize = SearchSpace("quantize", (Site("fc", "weight_bits", (4, 8, "float"), 8, unchanged="float"),))
    return RecipeSpace(("prune", "quantize"), (prune, quantize))


class _Scorer:
    """accuracy and latency_ms a pure function of the assignment; every call recorded; ``fail`` (a set of
    assignments as sorted item tuples) raise PassError."""

    def __init__(self, fail=(), latency=LATENCY, sensitivity=SENSITIVITY, bits_latency=BITS_LATENCY) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = set(fail)
        self.latency = latency
        self.sensitivity = sensitivity
        self.bits_latency = bits_latency

    def score(self, assignment: dict[str, Any]) -> Score:
        self.calls.append(dict(assignment))
        if tuple(sorted(assignment.items(), key=str)) in self.fail:
            raise PassError("The fake pass cannot apply this assignment.", "Choose another.")
        bits = assignment["quantize/fc"]
        latency = 0.5 + sum(w * assignment[k] for k, w in self.latency.items()) + self.bits_latency[bits]
        accuracy = 0.9 - sum(s * (16 - assignment[k]) for k, s in self.sensitivity.items())
        accuracy -= {4: 0.05, 8: 0.001, "float": 0.0}[bits]
        return Score(
            accuracy, latency, size_bytes=100 * sum(assignment[k] for k in self.latency), latency_source="fake"
        )


def _config(limit_ms=None, **kwargs) -> SearchConfig:
    budgets = () if limit_ms is None else (Budget("latency_ms", limit_ms),)
    return SearchConfig(budgets=budgets, **{"trials": 200, **kwargs})


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(directions=["maximize", "minimize"])


def _key(assignment):
    return tuple(sorted(assignment.items(), key=str))


def test_dense_assignment_is_unchanged_choice_of_every_site():
    assert dense_assignment(_space()) == {"prune/a": 16, "prune/b": 16, "prune/c": 16, "quantize/fc": "float"}


def test_dense_assignment_is_largest_choice_when_site_has_no_unchanged():
    space = RecipeSpace(("snn",), (SearchSpace("snn", (Site("timesteps", "timesteps", (1, 2, 4, 8), 4),)),))
    assert dense_assignment(space) == {"snn/timesteps": 8}


def test_shrink_steps_follow_each_scheme_chain_down_from_dense():
    site = Site("conv", "rank_kept", (8, 16, "spatial:8", "spatial:16", "dense"), 16, unchanged="dense")
    assert shrink_steps(site, "dense") == [16, "spatial:16"]
    assert shrink_steps(site, 16) == [8]
    assert shrink_steps(site, "spatial:16") == ["spatial:8"]
    assert shrink_steps(site, 8) == [] and shrink_steps(site, "spatial:8") == []
    bits = Site("fc", "weight_bits", (4, 8, "float"), 8, unchanged="float")
    assert shrink_steps(bits, "float") == [8] and shrink_steps(bits, 8) == [4] and shrink_steps(bits, 4) == []


def test_greedy_meets_reachable_budget_one_step_per_move():
    scorer = _Scorer()
    run = run_greedy(scorer, _space(), _config(5.0))
    assert run.stopped_by == "budget"
    assert run.final is not None and run.final.score.latency_ms <= 5.0
    assert run.path[0].assignment == dense_assignment(_space()) and run.path[0].site is None
    sites = {f"{p}/{s.name}": s for p, sp in zip(_space().prefixes, _space().spaces) for s in sp.sites}
    for before, after in zip(run.path, run.path[1:]):
        changed = [k for k in before.assignment if before.assignment[k] != after.assignment[k]]
        assert changed == [after.site]
        assert after.assignment[after.site] in shrink_steps(sites[after.site], before.assignment[after.site])
    # the step before the last was still over the budget: the loop stops at the first feasible assignment
    assert run.path[-2].score.latency_ms > 5.0


def test_greedy_shrinks_site_with_least_accuracy_lost_per_latency_saved_first():
    path = greedy_search(_Scorer(), _space(), _config(5.0))
    # float -> int8 costs 0.001 for 0.4 ms; prune/c 16 -> 12 costs 0.004 for 1.6 ms; prune/a costs 0.08 for 0.4 ms
    assert path[1].site == "quantize/fc" and path[1].assignment["quantize/fc"] == 8
    assert path[2].site == "prune/c"
    assert all(step.site != "prune/a" for step in path)


def test_greedy_never_scores_same_assignment_twice():
    scorer = _Scorer()
    run_greedy(scorer, _space(), _config(3.0), sites_per_step=2)
    keys = [_key(a) for a in scorer.calls]
    assert len(keys) == len(set(keys)) and len(keys) > 5


def test_greedy_records_every_proposal_as_study_trial_with_constraints():
    study, scorer = _study(), _Scorer()
    config = _config(5.0)
    run = run_greedy(scorer, _space(), config, study)
    trials = study.get_trials()
    assert len(trials) == len(scorer.calls) == run.scored == run.trials_done
    for trial, call in zip(trials, scorer.calls):
        assert trial.state == TrialState.COMPLETE and trial.params == call == trial.user_attrs[ASSIGNMENT]
        assert trial.user_attrs["strategy"] == "greedy" and trial.user_attrs["latency_source"] == "fake"
        assert trial.values[1] == pytest.approx(scorer.score(call).latency_ms)
        assert trial.constraints == {"latency_ms": pytest.approx(config.budgets[0].violation(trial.values[1]))}
    assert trials[0].user_attrs[GREEDY_STEP] == 0 and trials[0].user_attrs[GREEDY_SITE] is None
    assert study.user_attrs[GREEDY_PATH] == [s.trial_number for s in run.path]
    assert study.user_attrs[GREEDY_STOPPED_BY] == "budget"
    assert is_feasible(trials[run.path[-1].trial_number]) and not is_feasible(trials[run.path[-2].trial_number])


def test_greedy_rerun_on_same_study_scores_nothing_and_replays_path():
    study = _study()
    first = run_greedy(_Scorer(), _space(), _config(5.0), study)
    again = _Scorer()
    second = run_greedy(again, _space(), _config(5.0), study)
    assert again.calls == [] and second.scored == 0
    assert [s.assignment for s in second.path] == [s.assignment for s in first.path]
    assert len(study.get_trials()) == first.scored


def test_greedy_rerun_after_trial_target_goes_on_to_same_path_as_uninterrupted():
    whole = run_greedy(_Scorer(), _space(), _config(4.0, seed=3), sites_per_step=2)
    study = _study()
    cut = run_greedy(_Scorer(), _space(), _config(4.0, seed=3, trials=7), study, sites_per_step=2)
    assert cut.stopped_by == "target" and len(study.get_trials()) == 7
    resumed = run_greedy(_Scorer(), _space(), _config(4.0, seed=3), study, sites_per_step=2)
    assert resumed.scored == whole.scored - 7
    assert [s.assignment for s in resumed.path] == [s.assignment for s in whole.path]


def test_greedy_stops_at_trial_limit_when_budget_unreachable():
    study, scorer = _study(), _Scorer()
    run = run_greedy(scorer, _space(), _config(0.1, trials=5), study)
    assert run.stopped_by == "target"
    assert run.scored == 5 == len(scorer.calls) == len(study.get_trials())


def test_greedy_counts_trials_already_in_study_towards_target():
    study = _study()
    run_greedy(_Scorer(), _space(), _config(0.1, trials=4), study)
    scorer = _Scorer(latency={**LATENCY, "prune/a": 0.11})  # another problem: nothing reused
    run = run_greedy(scorer, _space(), _config(0.1, trials=6), study)
    assert run.stopped_by == "target" and run.scored == 2 and len(study.get_trials()) == 6


def test_greedy_stops_exhausted_when_every_site_is_at_its_smallest():
    run = run_greedy(_Scorer(), _space(), _config(0.1))
    assert run.stopped_by == "exhausted"
    assert run.final is not None
    assert run.final.assignment == {"prune/a": 4, "prune/b": 4, "prune/c": 4, "quantize/fc": 4}


def test_greedy_without_budget_traces_latency_down_to_smallest():
    run = run_greedy(_Scorer(), _space(), _config(None))
    assert run.stopped_by == "exhausted"
    latencies = [s.score.latency_ms for s in run.path]
    assert latencies == sorted(latencies, reverse=True) and len(set(latencies)) == len(latencies)


def test_greedy_tries_sites_per_step_seeded_sample_of_large_space():
    names = tuple(f"s{i}" for i in range(40))
    space = _space(names)
    latency = {f"prune/{n}": 0.01 for n in names}
    sensitivity = {f"prune/{n}": 0.001 * (i % 5) for i, n in enumerate(names)}
    runs = []
    for _ in range(2):
        study, scorer = _study(), _Scorer(latency=latency, sensitivity=sensitivity)
        run_greedy(scorer, space, _config(0.1, trials=30, seed=5), study, sites_per_step=4)
        runs.append((study, scorer))
    (study, scorer), (_, other) = runs
    first_step = [t for t in study.get_trials() if t.user_attrs[GREEDY_STEP] == 1]
    assert len(first_step) == 4  # not 41 proposals
    assert scorer.calls == other.calls  # seeded: the same draw


def test_greedy_draws_more_sites_when_sample_saves_nothing():
    # only prune/c costs latency: a step whose first drawn site is another goes on drawing until it tries c
    scorer = _Scorer(
        latency={"prune/a": 0.0, "prune/b": 0.0, "prune/c": 0.4},
        bits_latency=dict.fromkeys(WIDTHS[:2] + ("float",), 0.0),
    )
    study = _study()
    run = run_greedy(scorer, _space(), _config(0.5 + 0.4 * 12, seed=0), study, sites_per_step=1)
    assert run.stopped_by == "budget" and [s.site for s in run.path[1:]] == ["prune/c"]
    assert len([t for t in study.get_trials() if t.user_attrs[GREEDY_STEP] == 1]) > 1


def test_greedy_failed_proposal_is_fail_trial_with_reason_and_loop_goes_on():
    dense = dense_assignment(_space())
    bad = {**dense, "quantize/fc": 8}
    study, scorer = _study(), _Scorer(fail={_key(bad)})
    run = run_greedy(scorer, _space(), _config(5.0), study)
    assert run.stopped_by == "budget"
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params == bad and "cannot apply" in failed[0].user_attrs[FAILURE]
    assert all(step.assignment != bad for step in run.path)


def test_greedy_dense_start_failing_is_search_error():
    dense = dense_assignment(_space())
    with pytest.raises(SearchError, match="dense starting point"):
        run_greedy(_Scorer(fail={_key(dense)}), _space(), _config(5.0))


def test_greedy_stops_at_time_budget(monkeypatch):
    clock = SimpleNamespace(now=0.0)

    def monotonic():
        return clock.now

    class _Ticking(_Scorer):
        def score(self, assignment):
            clock.now += 10.0  # each proposal takes ten (fake) seconds
            return super().score(assignment)

    fake_time = SimpleNamespace(monotonic=monotonic, perf_counter=monotonic)
    monkeypatch.setattr(greedy, "time", fake_time)
    scorer = _Ticking()
    run = run_greedy(scorer, _space(), _config(0.1, time_budget_s=35.0))
    assert run.stopped_by == "time_budget" and len(scorer.calls) == 4


def test_greedy_rejects_bad_sites_per_step():
    with pytest.raises(InputError, match="sites_per_step"):
        run_greedy(_Scorer(), _space(), _config(5.0), sites_per_step=0)


def test_greedy_trials_are_reused_by_optuna_objective_and_judged_by_front():
    from repfx_deploy.search.front import pareto_front
    from repfx_deploy.search.objective import CACHED_FROM, Objective, run_study

    study, space = _study(), _space()
    config = _config(5.0)
    run = run_greedy(_Scorer(), space, config, study)
    final = run.path[-1]
    # the front holds only greedy trials within the budget, read from the constraints stored as optuna's are
    front = pareto_front(study.get_trials())
    assert front and all(t.values[1] <= 5.0 for t in front)
    assert final.trial_number in {t.number for t in front}
    # an optuna trial of the same study on the path's last assignment reuses its score instead of scoring again
    study.enqueue_trial(final.assignment)
    scorer = _Scorer()
    run_study(study, Objective(scorer, space, config), _config(5.0, trials=run.trials_done + 1))
    last = study.get_trials()[-1]
    assert scorer.calls == [] and last.user_attrs[CACHED_FROM] == final.trial_number


def test_greedy_resumes_from_sqlite_study_opened_again(tmp_path):
    from repfx_deploy.search.study import open_study

    config = _config(4.0, trials=6)
    first = run_greedy(_Scorer(), _space(), config, open_study(config, tmp_path))
    assert first.stopped_by == "target"
    scorer = _Scorer()
    more = _config(4.0, trials=200)
    resumed = run_greedy(scorer, _space(), more, open_study(more, tmp_path))
    whole = run_greedy(_Scorer(), _space(), more)
    assert len(scorer.calls) == whole.scored - 6
    assert [s.assignment for s in resumed.path] == [s.assignment for s in whole.path]
    reopened = open_study(more, tmp_path)
    assert reopened.user_attrs[GREEDY_PATH] == [s.trial_number for s in resumed.path]
    assert (tmp_path / "study.db").is_file()
