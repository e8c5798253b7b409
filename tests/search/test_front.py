"""The Pareto front of hand-made trials: feasibility from stored constraints and from measurements, and the
trials nearest the front."""

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from repfx_deploy.search.config import Budget
from repfx_deploy.search.front import (
    MEASURED_LATENCY,
    dominates,
    judged_feasible,
    most_accurate,
    nearest_to_front,
    pareto_front,
)


def _trial(number, accuracy, latency, *, width=None, state=TrialState.COMPLETE, constraints=None, **user_attrs):
    width = number if width is None else width
    trial = create_trial(
        state=state,
        values=[accuracy, latency] if state == TrialState.COMPLETE else None,
        params={"prune/conv": width},
        distributions={"prune/conv": CategoricalDistribution(list(range(100)))},
        constraints=constraints,
        user_attrs=user_attrs,
    )
    trial.number = number
    return trial


def test_pareto_front_keeps_only_non_dominated_trials_fastest_first():
    trials = [_trial(0, 0.9, 10.0), _trial(1, 0.8, 5.0), _trial(2, 0.7, 6.0), _trial(3, 0.95, 20.0)]
    front = pareto_front(trials)
    assert [t.number for t in front] == [1, 0, 3]


def test_pareto_front_excludes_infeasible_failed_and_running_trials():
    trials = [
        _trial(0, 0.9, 10.0, constraints={"latency_ms": 0.5}),
        _trial(1, 0.8, 5.0, constraints={"latency_ms": -0.2}),
        _trial(2, 0.0, 0.0, state=TrialState.FAIL),
        _trial(3, 0.0, 0.0, state=TrialState.RUNNING),
        _trial(4, 0.7, 4.0, constraints={"latency_ms": 0.0}),  # exactly at the budget is within it
    ]
    assert [t.number for t in pareto_front(trials)] == [4, 1]


def test_pareto_front_counts_a_repeated_assignment_once():
    trials = [_trial(0, 0.9, 10.0, width=8), _trial(1, 0.9, 10.0, width=8), _trial(2, 0.5, 1.0, width=4)]
    assert [t.number for t in pareto_front(trials)] == [2, 0]


def test_pareto_front_uses_measured_latency_when_asked():
    # predicted: 1 dominates 0; measured: 0 is faster than predicted and both are on the front
    trials = [_trial(0, 0.9, 10.0, **{MEASURED_LATENCY: 3.0}), _trial(1, 0.95, 5.0, **{MEASURED_LATENCY: 6.0})]
    assert [t.number for t in pareto_front(trials)] == [1]
    assert [t.number for t in pareto_front(trials, measured=True)] == [0, 1]


def test_judged_feasible_uses_the_measurement_over_the_stored_estimate():
    budget = Budget("latency_ms", 4.0)
    predicted_ok_measured_over = _trial(0, 0.9, 3.5, constraints={"latency_ms": -0.125}, **{MEASURED_LATENCY: 4.4})
    predicted_over_measured_ok = _trial(1, 0.9, 4.5, constraints={"latency_ms": 0.125}, **{MEASURED_LATENCY: 3.9})
    assert not judged_feasible(predicted_ok_measured_over, [budget])
    assert judged_feasible(predicted_over_measured_ok, [budget])
    assert [
        t.number for t in pareto_front([predicted_ok_measured_over, predicted_over_measured_ok], budgets=[budget])
    ] == [1]


def test_judged_feasible_falls_back_to_the_stored_constraint_without_the_figure():
    budget = Budget("size_bytes", 1000.0)
    assert not judged_feasible(_trial(0, 0.9, 3.0, constraints={"size_bytes": 0.5}), [budget])
    assert judged_feasible(_trial(1, 0.9, 3.0, size_bytes=900), [budget])
    assert not judged_feasible(_trial(2, 0.9, 3.0, size_bytes=1100), [budget])


def test_nearest_to_front_returns_the_closest_others_nearest_first():
    trials = [_trial(0, 0.9, 10.0), _trial(1, 0.5, 1.0), _trial(2, 0.88, 10.5), _trial(3, 0.1, 9.0)]
    front = pareto_front(trials)
    assert [t.number for t in front] == [1, 0]
    assert [t.number for t in nearest_to_front(trials, front, 1)] == [2]
    assert [t.number for t in nearest_to_front(trials, front, 5)] == [2, 3]
    assert nearest_to_front(trials, front, 0) == []


def test_most_accurate_breaks_ties_by_latency_then_trial_number():
    trials = [_trial(0, 0.9, 10.0), _trial(1, 0.9, 8.0), _trial(2, 0.9, 8.0)]
    assert most_accurate(trials).number == 1
    assert most_accurate([]) is None


def test_dominates_needs_one_strict_improvement():
    assert dominates((0.9, 1.0), (0.9, 2.0)) and not dominates((0.9, 1.0), (0.9, 1.0))


def test_front_of_a_real_study_matches_optunas_best_trials():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, lat in [(0.9, 10.0), (0.8, 5.0), (0.7, 6.0), (0.95, 20.0), (0.6, 1.0)]:
        study.add_trial(
            create_trial(
                values=[acc, lat],
                params={"w": int(lat * 10)},
                distributions={"w": CategoricalDistribution(list(range(1000)))},
            )
        )
    assert {t.number for t in pareto_front(study.trials)} == {t.number for t in study.best_trials}


def test_measurements_stored_on_the_study_come_back_on_copies_of_the_trials():
    from repfx_deploy.search.front import measurement_key, measurements, with_measurements

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = _trial(0, 0.9, 10.0)
    study.add_trial(trial)
    (stored,) = study.trials
    study.set_user_attr(measurement_key(stored), {"latency_ms": 7.5, "source": "measured-local"})
    study.set_user_attr("unrelated", 1)
    found = measurements(study.user_attrs)
    assert found == {stored.number: {"latency_ms": 7.5, "source": "measured-local"}}
    (copy_,) = with_measurements(study.trials, found)
    assert copy_.user_attrs[MEASURED_LATENCY] == 7.5 and MEASURED_LATENCY not in study.trials[0].user_attrs


def test_a_trial_whose_whole_model_failed_to_build_is_never_on_the_front():
    from repfx_deploy.search.front import with_measurements

    trials = [_trial(0, 0.9, 10.0), _trial(1, 0.8, 5.0)]
    marked = with_measurements(trials, {1: {"latency_ms": None, "error": "CompileError: no kernel"}})
    assert [t.number for t in pareto_front(marked)] == [0]
    assert [t.number for t in pareto_front(marked, budgets=[Budget("latency_ms", 100.0)])] == [0]
