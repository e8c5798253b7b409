from repfx_deploy.estimate.analytic import LayerCost
from repfx_deploy.estimate.fit import (
    error_summary,
    fit_analytic,
    fit_lut_correction,
    lut_prediction_ms,
)
from repfx_deploy.targets import EstimatorParams


def test_lut_correction_recovers_a_known_offset():
    # Whole-model = 0.9 x standalone sum - 4 us per layer + 8 us per call, on synthetic models.
    shapes = [(3, 0.1), (10, 2.0), (30, 0.5), (60, 4.0), (5, 8.0)]  # (small layers, one big layer's ms)
    models = [([0.05] * n + [big], 0.9 * (0.05 * n + big) - 0.004 * (n + 1) + 0.008) for n, big in shapes]
    scale, offset, run = fit_lut_correction(models)
    assert abs(scale - 0.9) < 0.05 and abs(offset + 4.0) < 1.0 and abs(run - 8.0) < 3.0
    assert all(abs(lut_prediction_ms(r, scale, offset, run) / m - 1) < 0.02 for r, m in models)


def test_analytic_fit_recovers_throughput():
    truth = EstimatorParams(conv_gmacs=8.0, bandwidth_gbs=1000.0, overhead_us=0.0)
    models = [([LayerCost("c", "Conv", "conv", macs=m, bytes_moved=1)], m / 8e9 * 1e3) for m in (1e6, 5e6, 2e7)]
    fitted = fit_analytic(models, EstimatorParams(conv_gmacs=1.0, bandwidth_gbs=1000.0, overhead_us=0.0), [("conv_gmacs",)])
    assert abs(fitted.conv_gmacs / truth.conv_gmacs - 1) < 0.05


def test_error_summary_counts_models_within_ten_percent():
    s = error_summary([1.05, 1.3, 0.95, 2.0], [1.0, 1.0, 1.0, 1.0])
    assert s["within_10pct"] == 0.5 and s["worst_pct"] == 100.0 and abs(s["mape_pct"] - 35.0) < 1e-9
