"""Tiny models for the quantize tests, named for the case they cover."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.spec import InputSpec


class ResidualConvNet(nn.Module):
    """Conv-BN-ReLU, a residual block with a BN on its second conv, global pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = F.relu(x + y)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _randomize_bn(model: nn.Module) -> nn.Module:
    # non-trivial running statistics, so folding has something to get wrong
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def make_residual_net() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(ResidualConvNet())


@pytest.fixture(scope="session")
def residual_factory():
    """Builds a fresh ResidualConvNet with fixed weights (for module-scoped fixtures in the test files)."""
    return make_residual_net


@pytest.fixture
def residual_net() -> nn.Module:
    return make_residual_net()


@pytest.fixture(scope="session")
def specs() -> tuple[InputSpec, ...]:
    return (InputSpec("input", (1, 3, 12, 12)),)


@pytest.fixture(scope="session")
def calib() -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(x=rng.standard_normal((64, 3, 12, 12)).astype(np.float32), y=rng.integers(0, 5, 64), source="random")


@pytest.fixture(scope="session")
def run_quantize():
    """``run_quantize(model, specs, calib, config, train=None, artifact_checks=True)``: the quantize pass's
    ``PassResult``, as a recipe would run it (prepare, then the default assignment)."""
    from protocol_checks import make_context

    from repfx_deploy.passes.registry import apply

    def run(model, specs, calib, config, *, train=None, artifact_checks=True):
        return apply(model, config, make_context(specs, calibration=calib, train=train, artifact_checks=artifact_checks))

    return run
