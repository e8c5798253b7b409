"""BatchNorm re-calibration: statistics re-estimated from data, everything else left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import DataError
from repfx_deploy.passes.recovery import recalibrate_bn


class ConvBnDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, momentum=0.3)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.drop(self.bn(self.conv(x)).mean((2, 3))))


def _data(n: int = 256, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(x=(rng.standard_normal((n, 3, 6, 6)) * 2 + 1).astype(np.float32), y=None, source="random")


def test_recalibrate_bn_matches_data_statistics_when_stats_were_stale():
    torch.manual_seed(0)
    model = ConvBnDropout()
    model.bn.running_mean.fill_(5.0)
    model.bn.running_var.fill_(9.0)
    data = _data()
    count = recalibrate_bn(model, data, batches=4, batch_size=64)
    assert count == 1
    with torch.no_grad():
        act = model.conv(torch.from_numpy(data.x))
    expected_mean = act.mean((0, 2, 3))
    torch.testing.assert_close(model.bn.running_mean, expected_mean, atol=1e-4, rtol=1e-4)
    # per-batch unbiased variances averaged: close to the variance over all samples
    torch.testing.assert_close(model.bn.running_var, act.var((0, 2, 3)), atol=0.05, rtol=0.05)


def test_recalibrate_bn_restores_modes_and_momentum():
    model = ConvBnDropout().train()
    model.drop.eval()  # a mixed state must come back exactly
    recalibrate_bn(model, _data(), batches=2, batch_size=32)
    assert model.training and model.bn.training and not model.drop.training
    assert model.bn.momentum == 0.3
    assert model.bn.num_batches_tracked.item() == 2


def test_recalibrate_bn_returns_zero_when_model_has_no_batchnorm():
    model = nn.Sequential(nn.Flatten(), nn.Linear(108, 2))
    before = [p.clone() for p in model.parameters()]
    assert recalibrate_bn(model, _data()) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_recalibrate_bn_raises_data_error_when_data_is_empty():
    empty = Dataset(x=np.zeros((0, 3, 6, 6), np.float32), y=None, source="empty")
    with pytest.raises(DataError, match="calibration"):
        recalibrate_bn(ConvBnDropout(), empty)
