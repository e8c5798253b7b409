from repfx_deploy.estimate.analytic import LayerCost
from repfx_deploy.estimate.fit import (
    error_summary,
    fit_analytic,
    fit_lut_correction,
    lut_prediction_ms,
)
from repfx_deploy.targets import EstimatorParams


def test_lut_correction_recovers_a_known_offset():
    # Whole model = 0.9 x standalone layers - 4 us per layer + 8 us per call + weights read at 40 GB/s.
    shapes = [(3, 0.1, 1e5), (10, 2.0, 4e6), (30, 0.5, 2e5), (60, 4.0, 8e6), (5, 8.0, 3e6), (20, 1.0, 1e7)]
    models = [([0.05] * n + [big], w, 0.9 * (0.05 * n + big) - 0.004 * (n + 1) + 0.008 + w / 40e6) for n, big, w in shapes]
    scale, offset, run, gbs = fit_lut_correction(models)
    assert abs(scale - 0.9) < 0.05 and abs(offset + 4.0) < 1.0 and abs(run - 8.0) < 3.0 and abs(gbs / 40 - 1) < 0.1
    assert all(abs(lut_prediction_ms(r, scale, offset, run, w, gbs) / m - 1) < 0.02 for r, w, m in models)


def test_analytic_fit_recovers_throughput():
    truth = EstimatorParams(conv_gmacs=8.0, bandwidth_gbs=1000.0, overhead_us=0.0)
    models = [([LayerCost("c", "Conv", "conv", macs=m, bytes_moved=1)], m / 8e9 * 1e3) for m in (1e6, 5e6, 2e7)]
    fitted = fit_analytic(models, EstimatorParams(conv_gmacs=1.0, bandwidth_gbs=1000.0, overhead_us=0.0), [("conv_gmacs",)])
    assert abs(fitted.conv_gmacs / truth.conv_gmacs - 1) < 0.05


def test_error_summary_counts_models_within_ten_percent():
    s = error_summary([1.05, 1.3, 0.95, 2.0], [1.0, 1.0, 1.0, 1.0])
    assert s["within_10pct"] == 0.5 and s["worst_pct"] == 100.0 and abs(s["mape_pct"] - 35.0) < 1e-9
