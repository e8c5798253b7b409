"""The coverage zoo: every architecture pruned by 50 % is smaller, dense, runs, keeps its output shape, exports
to ONNX matching torch, and (a representative few) compiles with TVM matching ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prune_zoo import ZOO

from repfx_deploy.analyze.torch_stats import torch_stats
from repfx_deploy.lower.onnx_export import export_onnx
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.passes.prune import PruneConfig, prune
from repfx_deploy.spec import InputSpec


def _pruned(name: str):
    build, shape = ZOO[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(*shape)
    result = prune(model, (x,), PruneConfig(ratio=0.5, round_to=4))
    return model, result, x, (InputSpec("input", shape),)


@pytest.fixture(scope="module", params=sorted(ZOO))
def pruned(request):
    return (request.param, *_pruned(request.param))


def test_zoo_model_pruned_by_half_is_smaller_dense_and_runs(pruned):
    name, model, result, x, specs = pruned
    module = result.module
    assert type(module) is type(model), f"{name} came back as {type(module).__name__}"
    before, after = torch_stats(model, specs), torch_stats(module, specs)
    assert after.params < 0.6 * before.params and after.macs < 0.6 * before.macs
    assert all(g["channels_after"] <= g["channels_before"] // 2 + 2 for g in result.extras["groups"])
    # dense: no masks, hooks or parametrizations left behind
    assert not any("mask" in n for n, _ in module.named_buffers())
    for m in module.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not hasattr(m, "parametrizations")
    with torch.no_grad():
        y = module(x)
    assert y.shape == model(x).shape and torch.isfinite(y).all()
    # the input model is untouched
    assert torch_stats(model, specs).params == before.params


def test_zoo_model_pruned_exports_to_onnx_matching_torch(pruned, tmp_path):
    name, _, result, x, specs = pruned
    path = export_onnx(result.module, specs, tmp_path / f"{name}.onnx").path
    got = OrtRunner(path, threads=1).run([x.numpy()])[0]
    with torch.no_grad():
        want = result.module(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.tvm
@pytest.mark.parametrize("name", ["resnet_option_a", "vit_block"])
def test_zoo_model_pruned_compiles_with_tvm_matching_onnxruntime(name, tmp_path):
    from repfx_deploy.compile import (
        CompileConfig,
        compile_onnx,
        host_target,
        load_tvm_runner,
    )

    _, result, x, specs = _pruned(name)
    path = export_onnx(result.module, specs, tmp_path / f"{name}.onnx").path
    out = tmp_path / "tvm"
    out.mkdir()
    artifact = compile_onnx(path, out, CompileConfig(target=host_target(threads=1), tuning_db=tmp_path / "db"))
    got = load_tvm_runner(artifact.library_path.parent, threads=1).run([x.numpy()])[0]
    np.testing.assert_allclose(got, OrtRunner(path, threads=1).run([x.numpy()])[0], atol=1e-4, rtol=1e-4)
