"""The study: storage and resume bookkeeping, the seeded samplers, budgets as constraints, the seeds."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from search_fakes import FakeScorer, fake_space, uniform_seeds

from repfx_deploy.errors import InputError, RecipeError
from repfx_deploy.search.config import SearchConfig, parse_budget
from repfx_deploy.search.objective import Objective, run_study
from repfx_deploy.search.study import (
    ASSIGNMENT,
    best_feasible_accuracy,
    enqueue_seeds,
    is_feasible,
    is_lost,
    make_sampler,
    open_study,
    recover_orphans,
    storage_url,
    trial_ordinal,
    trials_done,
)


def _search(tmp_path, name="s", **kwargs):
    config = SearchConfig(**{"trials": 12, **kwargs})
    study = open_study(config, tmp_path / name)
    run_study(study, Objective(FakeScorer(), fake_space(), config), config)
    return study


def test_import_leaves_optuna_unimported():
    code = "import sys, repfx_deploy.search.study, repfx_deploy.search.objective; print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_open_study_stores_sqlite_in_out_dir_and_loads_it_again(tmp_path):
    config = SearchConfig(trials=3)
    assert storage_url(config, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    study = open_study(config, tmp_path)
    assert (tmp_path / "study.db").is_file()
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    run_study(study, Objective(FakeScorer(), fake_space(), config), config)
    again = open_study(config, tmp_path)
    assert again._study_id == study._study_id
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


def test_open_study_refuses_when_the_budgets_differ(tmp_path):
    open_study(SearchConfig(budgets=(parse_budget("4ms"),)), tmp_path)
    with pytest.raises(InputError, match="budgets"):
        open_study(SearchConfig(budgets=(parse_budget("5ms"),)), tmp_path)


def test_open_study_refuses_with_a_fix_when_the_server_is_unreachable(tmp_path):
    config = SearchConfig(storage="postgresql+psycopg2://someone:secret@127.0.0.1:1/nowhere")
    with pytest.raises(InputError) as info:
        open_study(config, tmp_path)
    assert "secret" not in str(info.value)
    assert info.value.fix


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("nsga3", optuna.samplers.NSGAIIISampler),
        ("gp", optuna.samplers.GPSampler),
    ],
)
def test_make_sampler_builds_the_named_sampler(name, cls):
    sampler = make_sampler(SearchConfig(sampler=name))
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    assert isinstance(sampler._inner, cls)


def test_same_seed_proposes_the_same_assignments(tmp_path):
    first = _search(tmp_path, "a", seed=7)
    second = _search(tmp_path, "b", seed=7)
    other = _search(tmp_path, "c", seed=8)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.params for t in first.trials] != [t.params for t in other.trials]


@pytest.mark.parametrize(
    ("sampler", "trials"),
    [
        ("tpe", 24),
        ("gp", 16),
        # NSGA-II reads constraints like NSGA-III, by constrained domination; about 15 s more
        pytest.param(
            "nsga2",
            24,
            marks=pytest.mark.skipif(not os.environ.get("REPFX_ALL_SAMPLERS"), reason="set REPFX_ALL_SAMPLERS=1"),
        ),
    ],
)
def test_tight_budget_makes_the_sampler_propose_mostly_feasible_trials(tmp_path, sampler, trials):
    # latency_ms <= 2 holds for 13 of the fake space's 54 assignments (24 %): a sampler that ignored the
    # constraint would meet it about that often; the later half of a constrained search meets it far more
    kw = {"sampler": sampler, "trials": trials, "seed": 1}
    budgeted = _search(tmp_path, "budget", budgets=(parse_budget("latency_ms=2"),), **kw)
    free = _search(tmp_path, "free", **kw)

    def late_within(study):
        return sum(1 for t in study.trials if t.number >= trials // 2 and t.values[1] <= 2.0)

    assert late_within(budgeted) >= trials // 4  # at least half of the later half, twice the blind rate
    assert late_within(budgeted) > late_within(free)


def test_constraints_are_stored_and_infeasible_trials_left_off_the_front(tmp_path):
    study = _search(tmp_path, budgets=(parse_budget("latency_ms=2"), parse_budget("size_bytes=3000")), trials=16)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert all(set(t.constraints) == {"latency_ms", "size_bytes"} for t in complete)
    for t in complete:
        assert t.constraints["latency_ms"] == pytest.approx((t.values[1] - 2.0) / 2.0)
        assert t.constraints["size_bytes"] == pytest.approx((t.user_attrs["size_bytes"] - 3000) / 3000)
    infeasible = [t for t in complete if not is_feasible(t)]
    assert infeasible
    front = study.best_trials
    assert front and all(is_feasible(t) for t in front)
    feasible = [t.values[0] for t in complete if is_feasible(t)]
    assert best_feasible_accuracy(study) == max(feasible)


def test_enqueue_seeds_runs_them_first_and_skips_them_on_a_rerun(tmp_path):
    config = SearchConfig(trials=6)
    study = open_study(config, tmp_path)
    seeds = uniform_seeds()
    assert enqueue_seeds(study, fake_space(), seeds) == len(seeds)
    assert enqueue_seeds(study, fake_space(), seeds) == 0
    run_study(study, Objective(FakeScorer(), fake_space(), config), config)
    assert [t.params for t in study.trials[: len(seeds)]] == seeds
    assert enqueue_seeds(open_study(config, tmp_path), fake_space(), seeds) == 0


def test_enqueue_seeds_completes_a_partial_seed_with_the_defaults(tmp_path):
    study = open_study(SearchConfig(), tmp_path)
    enqueue_seeds(study, fake_space(), [{"prune/a": 4}])
    assert study.trials[0].system_attrs["fixed_params"] == {
        "prune/a": 4,
        "prune/b": 16,
        "prune/c": 16,
        "quantize/fc": "float",
    }


@pytest.mark.parametrize("seed", [{"prune/zz": 4}, {"prune/a": 5}])
def test_enqueue_seeds_refuses_when_the_space_lacks_it(tmp_path, seed):
    with pytest.raises(RecipeError):
        enqueue_seeds(open_study(SearchConfig(), tmp_path), fake_space(), [seed])


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() by hand, as a killed worker left it
def test_recover_orphans_fails_a_running_trial_and_enqueues_it_again(tmp_path):
    config = SearchConfig(trials=3)
    study = open_study(config, tmp_path)
    run_study(study, Objective(FakeScorer(), fake_space(), config), config)
    orphan = study.ask()  # as a killed process leaves it: RUNNING, its assignment chosen
    params = {key: orphan.suggest_categorical(key, [4, 8, 16]) for key in ("prune/a", "prune/b")}
    orphan.set_user_attr(ASSIGNMENT, params)
    half = study.ask()  # killed while choosing: drawn afresh rather than retried
    half.suggest_categorical("prune/a", [4, 8, 16])

    assert recover_orphans(study) == [orphan.number, half.number]
    trials = study.trials
    assert all(is_lost(trials[n]) for n in (orphan.number, half.number))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params for t in waiting] == [params]
    assert waiting[0].system_attrs["failed_trial"] == orphan.number
    assert trials_done(study) == 3
    assert trial_ordinal(study, waiting[0].number) == 3
    assert recover_orphans(study) == []
