"""Token-reduced models export to ONNX with static shapes, match ONNX Runtime, and compile with TVM."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import vit_zoo
from protocol_checks import make_context

from repfx_deploy.lower.onnx_export import export_onnx
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.passes.registry import apply
from repfx_deploy.passes.tokens import TokensConfig
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 16, 16)),)
CASES = {
    "zero-tprune-drop": TokensConfig(keep=(13, 9, 1), reduction="drop"),
    "tome-merge": TokensConfig(keep=(13, 9, 1), method="merge"),
    "zero-tprune-merge-one-reduction": TokensConfig(keep=(11, 11, 1), pagerank_iterations=1),
}


def _reduced(config: TokensConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return apply(vit_zoo.PostNormTorchViT().eval(), config, make_context(SPECS)).module


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_export_static_and_matches_torch(case, tmp_path):
    model = _reduced(CASES[case])
    path = export_onnx(model, SPECS, tmp_path / "m.onnx").path
    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    for value in list(graph.value_info) + list(graph.output):
        assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), value.name
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(OrtRunner(path, 1).run([x])[0], expected, rtol=1e-4, atol=1e-5)


def test_tvm_compile_matches_onnx_runtime(tmp_path):
    pytest.importorskip("tvm")
    from repfx_deploy.compile.config import CompileConfig
    from repfx_deploy.compile.tvm_build import compile_onnx
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.targets import get_profile, resolve_tvm_target

    model = _reduced(TokensConfig(keep=(13, 9, 1), reduction="merge"))
    path = export_onnx(model, SPECS, tmp_path / "m.onnx").path
    (tmp_path / "tvm").mkdir()
    compile_onnx(path, tmp_path / "tvm", CompileConfig(target=resolve_tvm_target(get_profile("host"), 1)))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = load_tvm_runner(tmp_path / "tvm", 1).run([x])[0]
    np.testing.assert_allclose(got, OrtRunner(path, 1).run([x])[0], rtol=1e-4, atol=1e-5)
