"""The CIFAR ViT of the shared assets (nn.TransformerEncoder, a class token expanded with len()) pruned to half
its MACs: heads, MLP units and the model width go, and the result exports to ONNX matching torch."""

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


def test_cifar_vit_pruned_to_half_macs_loses_heads_and_exports(zoo, tmp_path):
    model = zoo.cifar10_vit().eval()
    result = prune(model, (torch.zeros(1, 3, 32, 32),), PruneConfig(macs_ratio=0.5, round_to=8))
    pruned = result.module
    kept = torch_stats(pruned, SPECS).macs / torch_stats(model, SPECS).macs
    assert 0.4 < kept <= 0.52
    assert any(layer.self_attn.num_heads < 8 for layer in pruned.transformer.layers)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        want = pruned(x).numpy()
    path = export_onnx(pruned, SPECS, tmp_path / "vit.onnx").path
    np.testing.assert_allclose(OrtRunner(path, threads=1).run([x.numpy()])[0], want, atol=1e-4, rtol=1e-4)
