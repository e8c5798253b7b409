"""Several worker processes on one study, in SQLite and in PostgreSQL: all of them work, the total is the target."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from optuna.trial import TrialState
from postgres import postgres_url  # noqa: F401  (the fixture)

from repfx_deploy.errors import InputError, SearchError
from repfx_deploy.search.config import SearchConfig
from repfx_deploy.search.objective import WORKER
from repfx_deploy.search.study import open_study, trials_done
from repfx_deploy.search.workers import run_workers, worker_command

FACTORY = "search_fakes:make_objective"


def _env(extra, fixtures_dir):
    path = os.pathsep.join(p for p in (str(fixtures_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {**extra, "PYTHONPATH": path}


def _two_workers(tmp_path, fixtures_dir, **kwargs):
    # each trial sleeps so that both workers are up before the first one could finish the study alone
    config = SearchConfig(trials=10, **kwargs)
    study = open_study(config, tmp_path)
    argv, env = worker_command(FACTORY, config, tmp_path, {"sleep_s": 0.3})
    run_workers(2, argv, env=_env(env, fixtures_dir), study=study, config=config, log_dir=tmp_path / "logs")
    return study, config


def _assert_shared(study, config):
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert trials_done(study) == len(complete) == config.trials
    by_worker = Counter(t.user_attrs[WORKER] for t in complete)
    assert len(by_worker) == 2, by_worker
    # a surplus trial (both workers took the last one at once) is dropped, not left running or counted
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_two_workers_share_one_sqlite_study(tmp_path, fixtures_dir):
    study, config = _two_workers(tmp_path, fixtures_dir)
    _assert_shared(study, config)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["worker-0.log", "worker-1.log"]


def test_two_workers_share_one_postgresql_study(tmp_path, fixtures_dir, postgres_url):  # noqa: F811
    study, config = _two_workers(tmp_path, fixtures_dir, storage=postgres_url)
    _assert_shared(study, config)
    assert not (tmp_path / "study.db").exists()


def test_run_workers_names_the_failed_worker_and_its_log(tmp_path, fixtures_dir):
    config = SearchConfig(trials=2)
    argv, env = worker_command("search_fakes:no_such_factory", config, tmp_path)
    with pytest.raises(SearchError) as info:
        run_workers(2, argv, env=_env(env, fixtures_dir))
    assert "2 of 2 search workers failed" in str(info.value)
    assert "no_such_factory" in str(info.value)


def test_worker_command_refuses_when_the_factory_is_not_module_function(tmp_path):
    with pytest.raises(InputError):
        worker_command("search_fakes.make_objective", SearchConfig(), tmp_path)
