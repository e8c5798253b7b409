"""Real model: the published CIFAR ResNet-20 (option-A shortcuts) pruned to half its MACs runs, keeps its class,
and exports to ONNX matching torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repfx_deploy.analyze.torch_stats import torch_stats
from repfx_deploy.lower.onnx_export import export_onnx
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.passes.prune import PruneConfig, prune
from repfx_deploy.spec import InputSpec

pytestmark = pytest.mark.assets

SPECS = (InputSpec("input", (1, 3, 32, 32)),)


def test_resnet20_pruned_to_half_macs_runs_and_exports(zoo, tmp_path):
    model = zoo.cifar10_resnet(20)
    result = prune(model, (torch.zeros(1, 3, 32, 32),), PruneConfig(macs_ratio=0.5, round_to=8))
    pruned = result.module
    assert type(pruned) is type(model)
    kept = torch_stats(pruned, SPECS).macs / torch_stats(model, SPECS).macs
    assert 0.45 < kept <= 0.5  # refined: close to the target, not on the first uniform step below it
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        want = pruned(x).numpy()
    path = export_onnx(pruned, SPECS, tmp_path / "r20.onnx").path
    np.testing.assert_allclose(OrtRunner(path, threads=1).run([x.numpy()])[0], want, atol=1e-4, rtol=1e-4)
