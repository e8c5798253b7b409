"""Measuring the front whole: every member of the front judged on measurements gets measured, the predictor is
recalibrated, a rerun measures nothing again, and a candidate that cannot be built is never feasible."""

from dataclasses import dataclass, field

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from repfx_deploy.errors import CompileError
from repfx_deploy.search.front import MEASURED_LATENCY, is_measured, pareto_front
from repfx_deploy.search.measure import measure_front
from repfx_deploy.search.predictor import Correction, Measurement, Prediction, fit_correction, prediction_error

WIDTHS = list(range(1, 11))


@dataclass
class _Run:
    width: int
    configs: tuple = ()


class _Chain:
    def apply(self, assignment):
        return _Run(assignment["prune/conv"])


@dataclass
class _Predictor:
    """Predicts ``width`` ms and measures ``2 * width`` ms: off by a common factor, as a layer table is."""

    broken: set = field(default_factory=set)
    measured: list = field(default_factory=list)
    correction: Correction = field(default_factory=Correction)
    fitted: list = field(default_factory=list)

    def predict(self, run):
        return Prediction(self.correction.apply(run.width), "lut-ort", float(run.width))

    def measure(self, run):
        if run.width in self.broken:
            raise CompileError("no kernel for this width", "none")
        self.measured.append(run.width)
        return Measurement(2.0 * run.width, "measured-local")

    def recalibrate(self, pairs=None):
        self.fitted = list(pairs or [])
        self.correction = fit_correction(self.fitted)
        return self.correction

    def error(self):
        return prediction_error(self.fitted, self.correction)


def _study(points):
    """A study of trials (width, accuracy): predicted latency = width, no constraints."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for width, accuracy in points:
        study.add_trial(
            create_trial(
                values=[accuracy, float(width)],
                params={"prune/conv": width},
                distributions={"prune/conv": CategoricalDistribution(WIDTHS)},
                user_attrs={"details": {"latency_raw_ms": float(width)}},
            )
        )
    return study


POINTS = [(1, 0.5), (2, 0.6), (3, 0.55), (5, 0.8), (8, 0.9), (10, 0.85)]


def test_measure_front_measures_the_front_and_the_nearest_others_and_recalibrates():
    study, predictor = _study(POINTS), _Predictor()
    outcome = measure_front(study, _Chain(), predictor, near=1)
    front = pareto_front(outcome.trials, measured=True)
    assert {t.params["prune/conv"] for t in front} == {1, 2, 5, 8}
    assert all(is_measured(t) for t in front)
    assert set(predictor.measured) >= {1, 2, 5, 8} and len(predictor.measured) == len(set(predictor.measured))
    assert outcome.error["n"] == len(predictor.measured) and outcome.error["mape_pct"] == pytest.approx(0.0, abs=1e-9)
    assert predictor.correction.scale == pytest.approx(2.0)
    assert {t.number: t.user_attrs[MEASURED_LATENCY] for t in front} == {
        t.number: 2.0 * t.params["prune/conv"] for t in front
    }


def test_measure_front_on_a_resumed_study_measures_nothing_again():
    study = _study(POINTS)
    first = measure_front(study, _Chain(), _Predictor(), near=1)
    again_predictor = _Predictor()
    again = measure_front(study, _Chain(), again_predictor, near=1)
    assert first.new > 0 and again.new == 0 and again_predictor.measured == []
    assert again.error["n"] == first.error["n"]  # recalibrated on the stored pairs


def test_a_candidate_that_cannot_be_measured_leaves_the_front():
    study = _study(POINTS)
    outcome = measure_front(study, _Chain(), _Predictor(broken={8}), near=0)
    front = pareto_front(outcome.trials, measured=True)
    assert 8 not in {t.params["prune/conv"] for t in front}
    assert 10 in {t.params["prune/conv"] for t in front}  # what 8 dominated comes in, and is measured
    assert outcome.failed == 1 and all(is_measured(t) for t in front)
