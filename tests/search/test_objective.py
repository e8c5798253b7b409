"""One trial and the run loop: what a trial stores, failed candidates, the cache, the stops."""

from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState
from search_fakes import FakeScorer, fake_space

from repfx_deploy.errors import SearchError
from repfx_deploy.search.config import SearchConfig, parse_budget
from repfx_deploy.search.objective import CACHED_FROM, FAILURES_BEFORE_STOP, Objective, Score, failure_reason, run_study
from repfx_deploy.search.study import FAILURE, is_lost, open_study, trials_done

ASSIGNMENT = {"prune/a": 8, "prune/b": 4, "prune/c": 16, "quantize/fc": "8"}


def _run(tmp_path, scorer, **kwargs):
    config = SearchConfig(**{"trials": 6, **kwargs})
    study = open_study(config, tmp_path)
    return study, run_study(study, Objective(scorer, fake_space(), config), config)


def test_trial_stores_its_score_assignment_and_constraints(tmp_path):
    config = SearchConfig(trials=1, budgets=(parse_budget("latency_ms=2"),))
    study = open_study(config, tmp_path)
    study.enqueue_trial(ASSIGNMENT)
    run_study(study, Objective(FakeScorer(), fake_space(), config), config)
    trial = study.trials[0]
    expected = FakeScorer().score(ASSIGNMENT)
    assert trial.values == [pytest.approx(expected.accuracy), pytest.approx(expected.latency_ms)]
    assert trial.params == ASSIGNMENT
    assert trial.user_attrs["assignment"] == ASSIGNMENT
    assert trial.user_attrs["size_bytes"] == expected.size_bytes
    assert trial.user_attrs["latency_source"] == "fake"
    assert trial.user_attrs["details"] == {"widths": 28}
    assert trial.user_attrs["score_time_s"] >= 0
    assert trial.constraints == {"latency_ms": pytest.approx((expected.latency_ms - 2) / 2)}


def test_failed_candidate_is_a_fail_trial_with_its_reason_and_the_search_goes_on(tmp_path):
    scorer = FakeScorer(fail_when={"prune/a": 4})
    config = SearchConfig(trials=8)
    study = open_study(config, tmp_path)
    study.enqueue_trial({**ASSIGNMENT, "prune/a": 4})
    run = run_study(study, Objective(scorer, fake_space(), config), config)
    failed = study.trials[0]
    assert failed.state == TrialState.FAIL
    assert "fake pass cannot apply" in failed.user_attrs[FAILURE]
    assert "Fix: Choose another." in failed.user_attrs[FAILURE]
    assert not is_lost(failed)
    assert run.trials_done == trials_done(study) == 8
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) >= 1


def test_repeated_assignment_reuses_the_earlier_score(tmp_path):
    scorer = FakeScorer()
    config = SearchConfig(trials=3, budgets=(parse_budget("size_bytes=5000"),))
    study = open_study(config, tmp_path)
    for _ in range(3):
        study.enqueue_trial(ASSIGNMENT, skip_if_exists=False)
    run_study(study, Objective(scorer, fake_space(), config), config)
    first, *repeats = study.trials
    assert scorer.calls == [ASSIGNMENT]
    for trial in repeats:
        assert trial.values == first.values
        assert trial.user_attrs[CACHED_FROM] == first.number
        assert trial.user_attrs["size_bytes"] == first.user_attrs["size_bytes"]
        assert trial.constraints == first.constraints


def test_score_refuses_when_a_value_is_not_finite():
    with pytest.raises(ValueError, match="accuracy"):
        Score(accuracy=math.nan, latency_ms=1.0, size_bytes=1, latency_source="fake")
    with pytest.raises(ValueError, match="latency"):
        Score(accuracy=0.5, latency_ms=-1.0, size_bytes=1, latency_source="fake")


def test_scorer_returning_a_bad_score_is_a_failed_candidate(tmp_path):
    class Broken:
        def score(self, assignment):
            return Score(accuracy=math.inf, latency_ms=1.0, size_bytes=1, latency_source="fake")

    class HalfBroken(FakeScorer):
        def score(self, assignment):
            if assignment["prune/a"] == 4:
                return Broken().score(assignment)
            return super().score(assignment)

    study, run = _run(tmp_path, HalfBroken(), trials=10)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and all("finite accuracy" in t.user_attrs[FAILURE] for t in failed)
    assert run.trials_done == 10


def test_run_study_stops_with_the_first_reason_when_every_candidate_fails(tmp_path):
    class Failing(FakeScorer):
        def score(self, assignment):
            raise RuntimeError(f"cannot build {len(self.calls)}")

    with pytest.raises(SearchError, match="cannot build 0"):
        _run(tmp_path, Failing(), trials=50)
    assert len(open_study(SearchConfig(), tmp_path).trials) == FAILURES_BEFORE_STOP


def test_run_study_stops_at_the_target_counting_earlier_runs(tmp_path):
    study, first = _run(tmp_path, FakeScorer(), trials=4)
    assert (first.ran, first.trials_done, first.stopped_by) == (4, 4, "target")
    config = SearchConfig(trials=6)
    again = run_study(open_study(config, tmp_path), Objective(FakeScorer(), fake_space(), config), config)
    assert (again.ran, again.trials_done) == (2, 6)
    assert len(study.trials) == 6


def test_run_study_stops_cleanly_at_the_time_budget(tmp_path):
    study, run = _run(tmp_path, FakeScorer(sleep_s=0.05), trials=1000, time_budget_s=0.2)
    assert run.stopped_by == "time_budget"
    assert 1 <= run.ran < 1000
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_interrupted_trial_is_handed_back_and_a_rerun_starts_with_it(tmp_path):
    class Interrupting(FakeScorer):
        def score(self, assignment):
            if len(self.calls) == 2:
                self.calls.append(dict(assignment))
                raise KeyboardInterrupt
            return super().score(assignment)

    scorer = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, scorer, trials=5)
    study = open_study(SearchConfig(trials=5), tmp_path)
    interrupted = study.trials[2]
    assert is_lost(interrupted)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params for t in waiting] == [interrupted.params]
    again = FakeScorer()
    _, run = _run(tmp_path, again, trials=5)
    assert again.calls[0] == interrupted.params
    assert run.trials_done == 5


def test_run_study_draws_a_progress_bar_when_asked(tmp_path, capsys):
    config = SearchConfig(trials=3, budgets=(parse_budget("latency_ms=10"),))
    study = open_study(config, tmp_path)
    run_study(study, Objective(FakeScorer(), fake_space(), config), config, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err
    assert "best feasible accuracy" in err


def test_failure_reason_names_the_problem_and_the_fix_on_one_line():
    from repfx_deploy.errors import PassError

    assert failure_reason(PassError("Bad\nthing.", "Do that.")) == "Bad thing. Fix: Do that."
    assert failure_reason(RuntimeError("boom")) == "RuntimeError: boom"
    assert len(failure_reason(RuntimeError("x" * 5000))) == 2000


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() by hand, as a dead worker left it
def test_run_study_waits_for_a_dead_workers_trial_and_runs_it_again(tmp_path, monkeypatch):
    import repfx_deploy.search.objective as objective_module
    import repfx_deploy.search.study as study_module

    monkeypatch.setattr(study_module, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(study_module, "GRACE_PERIOD_S", 1)
    monkeypatch.setattr(objective_module, "WAIT_POLL_S", 0.2)
    study, _ = _run(tmp_path, FakeScorer(), trials=2)
    study.enqueue_trial(ASSIGNMENT)
    orphan = study.ask()  # another worker's trial, which beat once and died
    for prefix, space in zip(fake_space().prefixes, fake_space().spaces):
        for site in space.sites:
            orphan.suggest_categorical(f"{prefix}/{site.name}", list(site.choices))
    orphan.set_user_attr("assignment", ASSIGNMENT)
    study._storage.record_heartbeat(orphan._trial_id)

    scorer = FakeScorer()
    _, run = _run(tmp_path, scorer, trials=3)
    assert scorer.calls == [ASSIGNMENT]
    assert run.trials_done == 3
    assert is_lost(open_study(SearchConfig(), tmp_path).trials[orphan.number])
