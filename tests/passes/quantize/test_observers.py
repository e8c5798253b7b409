import pytest
import torch

from repfx_deploy.passes.quantize.observers import (
    HistogramObserver,
    activation_qparams,
    weight_scales,
)


def _observe(x: torch.Tensor) -> HistogramObserver:
    obs = HistogramObserver()
    obs.update(x)
    obs.start_histogram()
    obs.update(x)
    return obs


def test_minmax_scale_spans_the_observed_range():
    obs = _observe(torch.tensor([-1.0, 0.0, 3.0]))
    scale, zp = activation_qparams(obs, "minmax", 99.9, relu=False)
    assert scale == pytest.approx(4.0 / 255)
    assert zp == round(1.0 / (4.0 / 255))


def test_relu_quantizer_starts_its_range_at_zero():
    scale, zp = activation_qparams(_observe(torch.tensor([0.0, 2.55])), "minmax", 99.9, relu=True)
    assert (scale, zp) == (pytest.approx(0.01), 0)


def test_percentile_clips_a_single_outlier():
    x = torch.cat([torch.linspace(0, 1, 100_000), torch.tensor([100.0])])
    scale, zp = activation_qparams(_observe(x), "percentile", 99.9, relu=False)
    assert zp == 0
    assert scale * 255 == pytest.approx(1.0, abs=0.1)  # the outlier at 100 would make it 100


def test_mse_clips_a_long_tail_but_keeps_the_bulk():
    torch.manual_seed(0)
    x = torch.randn(200_000).abs()
    scale, _ = activation_qparams(_observe(x), "mse", 99.9, relu=True)
    assert 2.0 < scale * 255 < float(x.max())


def test_weight_scales_minmax_is_max_abs_over_127_per_channel():
    w = torch.tensor([[0.5, -1.27], [2.54, 0.1]])
    torch.testing.assert_close(weight_scales(w, 8, "minmax"), torch.tensor([0.01, 0.02]))


def test_weight_scales_mse_never_worse_than_minmax_at_4_bits():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    def err(s):
        q = torch.clamp(torch.round(w / s[:, None]), -8, 7) * s[:, None]
        return ((q - w) ** 2).sum(1)
    assert torch.all(err(weight_scales(w, 4, "mse")) <= err(weight_scales(w, 4, "minmax")) + 1e-6)
