"""The latency predictor: tiers per target and runtime, recalibration from whole measurements, MAPE and Kendall tau."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repfx_deploy.errors import InputError
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.passes.registry import PassRun
from repfx_deploy.search import predictor as predictor_mod
from repfx_deploy.search.predictor import (
    Correction,
    TieredPredictor,
    choose_runtime,
    fit_correction,
    kendall_tau,
    prediction_error,
    run_key,
)
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import get_profile

SPECS = (InputSpec("input", (1, 3, 8, 8)),)
FAST = TimingConfig(warmup=1, repeats=3, min_time_s=0.0, max_repeats=3, remeasure=0)


class Small(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


def _run(width: int = 8) -> PassRun:
    torch.manual_seed(0)
    return PassRun(Small(width).eval(), [], (), SPECS)


def test_fit_recovers_a_known_scale_and_offset():
    predicted = [0.5, 1.0, 2.0, 5.0, 10.0]
    pairs = [(p, 1.3 * p + 0.2) for p in predicted]
    fit = fit_correction(pairs)
    assert fit.scale == pytest.approx(1.3) and fit.offset_ms == pytest.approx(0.2) and fit.n == 5
    assert prediction_error(pairs, fit)["mape_pct"] == pytest.approx(0.0, abs=1e-9)


def test_fit_with_one_pair_or_equal_predictions_is_scale_only():
    assert fit_correction([(2.0, 3.0)]) == Correction(1.5, 0.0, 1)
    same = fit_correction([(2.0, 3.0), (2.0, 5.0)])
    assert same.offset_ms == 0.0 and same.scale > 0


def test_fit_leaves_out_unusable_pairs_and_is_the_identity_without_any():
    assert fit_correction([]) == Correction()
    assert fit_correction([(0.0, 1.0), (float("nan"), 2.0), (1.0, -1.0)]) == Correction()


def test_correction_never_drives_a_prediction_to_nothing():
    fit = Correction(scale=1.0, offset_ms=-5.0, n=2)
    assert fit.apply(1.0) == pytest.approx(0.1) and fit.apply(10.0) == pytest.approx(5.0)


def test_kendall_tau_of_a_perfect_order_is_one_and_of_its_reverse_minus_one():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    assert kendall_tau([1], [1]) is None and kendall_tau([1, 1], [2, 3]) is None


def test_kendall_tau_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30).tolist(), rng.integers(0, 5, 30).tolist()
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_tiers_follow_the_target_and_runtime():
    host, rpi4 = get_profile("host"), get_profile("rpi4")
    assert TieredPredictor(host, "onnxruntime", SPECS).tier == "lut-ort"
    assert TieredPredictor(host, "tvm", SPECS).tier == "lut-tvm"
    device = TieredPredictor(rpi4, "tvm", SPECS)
    assert device.tier == "estimated" and device.measure_source == "estimated"


def test_choose_runtime_prefers_tvm_and_refuses_what_the_target_lacks():
    assert choose_runtime(get_profile("host")) == "tvm"
    assert choose_runtime(get_profile("host"), "onnxruntime") == "onnxruntime"
    with pytest.raises(InputError, match="rpi4"):
        choose_runtime(get_profile("rpi4"), "onnxruntime")


def test_run_key_tells_architectures_apart_and_ignores_weights():
    a, b = _run(8), _run(8)
    with torch.no_grad():
        b.module.conv.weight.add_(1.0)
    assert run_key(a) == run_key(b) != run_key(_run(16))


def test_ort_prediction_uses_the_layer_table_and_is_cached_per_model(tmp_path, monkeypatch):
    from repfx_deploy.estimate import model as estimate_model

    calls = []
    real = estimate_model.estimate_latency
    monkeypatch.setattr(estimate_model, "estimate_latency", lambda *a, **k: calls.append(k) or real(*a, **k))
    p = TieredPredictor(get_profile("host"), "onnxruntime", SPECS, threads=1, cache_root=tmp_path)
    first = p.predict(_run())
    again = p.predict(_run())
    assert first.source == "lut-ort" and first.latency_ms > 0 and first.details["layers"] > 0
    assert again == first and len(calls) == 1 and calls[0]["method"] == "lookup table"
    assert list((tmp_path / "latency-lut").glob("onnxruntime-*.json"))  # the table is cached under cache_root


def test_estimated_tier_uses_the_profiles_estimator_for_a_device():
    p = TieredPredictor(get_profile("rpi4"), "tvm", SPECS)
    prediction = p.predict(_run())
    assert prediction.source == "estimated" and prediction.details["method"] == "analytic model"
    assert prediction.latency_ms == prediction.raw_ms > 0


def test_measure_is_whole_model_cached_and_pairs_with_the_prediction(tmp_path, monkeypatch):
    p = TieredPredictor(get_profile("host"), "onnxruntime", SPECS, threads=1, timing=FAST, cache_root=tmp_path)
    monkeypatch.setattr(p, "_predict_raw", lambda run: predictor_mod.Prediction(0.5, "lut-ort", 0.5))
    m = p.measure(_run())
    assert m.source == "measured-local" and m.measured and float(m) == m.latency_ms > 0
    assert p.measure(_run()) is m and p.measurements == 1
    assert p.pairs == [(0.5, m.latency_ms)]
    assert p.time_s["measure"] > 0


def test_recalibration_corrects_later_predictions_and_error_reports_it(monkeypatch):
    p = TieredPredictor(get_profile("rpi4"), "tvm", SPECS)
    raws = {8: 1.0, 16: 2.0, 32: 4.0}
    monkeypatch.setattr(p, "_predict_raw", lambda run: _raw(raws[run.module.fc.in_features]))
    before = p.predict(_run(16)).latency_ms
    fit = p.recalibrate([(1.0, 2.5), (2.0, 4.5), (4.0, 8.5)])  # measured = 2 * raw + 0.5
    assert before == 2.0 and fit.scale == pytest.approx(2.0) and fit.offset_ms == pytest.approx(0.5)
    after = p.predict(_run(16))
    assert after.latency_ms == pytest.approx(4.5) and after.raw_ms == 2.0
    error = p.error()
    assert error["n"] == 3 and error["mape_pct"] == pytest.approx(0.0, abs=1e-9) and error["kendall_tau"] == 1.0
    assert error["mape_raw_pct"] > 50 and error["correction"]["scale"] == pytest.approx(2.0)
    assert error["mape_loo_pct"] == pytest.approx(0.0, abs=1e-9)  # an exact line is predicted from any two points


def test_leave_one_out_error_is_reported_from_three_pairs_and_exceeds_the_in_sample_one():
    pairs = [(1.0, 1.1), (2.0, 1.9), (3.0, 3.3), (4.0, 3.8)]
    error = prediction_error(pairs, fit_correction(pairs))
    assert error["mape_loo_pct"] > error["mape_pct"] > 0
    assert prediction_error(pairs[:2], fit_correction(pairs[:2]))["mape_loo_pct"] is None


def test_recalibrate_without_pairs_fits_the_measured_candidates():
    p = TieredPredictor(get_profile("rpi4"), "tvm", SPECS)
    p.pairs = [(1.0, 3.0), (2.0, 6.0), (3.0, 9.0)]
    assert p.recalibrate().scale == pytest.approx(3.0) and p.error()["n"] == 3


def test_error_before_any_measurement_says_nothing_is_known():
    error = TieredPredictor(get_profile("rpi4"), "tvm", SPECS).error()
    assert error["n"] == 0 and error["mape_pct"] is None and error["kendall_tau"] is None


def _raw(ms: float):
    return predictor_mod.Prediction(ms, "estimated", ms)
