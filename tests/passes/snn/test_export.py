"""The spiking network exports to ONNX with its steps unrolled and runs the same in ONNX Runtime and TVM."""

import numpy as np
import pytest
import torch
from snn_nets import ConvBnPoolNet, OptionAShortcutNet, dataset, make

from repfx_deploy.lower.onnx_export import export_onnx
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.passes.snn.config import SnnConfig
from repfx_deploy.passes.snn.convert import convert
from repfx_deploy.spec import InputSpec


def _snn(cls, shape, T):
    x = torch.from_numpy(dataset(shape, n=32).x)
    snn, _ = convert(make(cls), [x], SnnConfig(timesteps=T, percentile=99.0))
    return snn.eval(), x


@pytest.mark.parametrize("cls, shape", [(ConvBnPoolNet, (1, 8, 8)), (OptionAShortcutNet, (3, 8, 8))])
def test_onnx_export_matches_torch_in_onnxruntime(cls, shape, tmp_path):
    snn, x = _snn(cls, shape, T=3)
    path = export_onnx(snn, (InputSpec("input", (1, *shape)),), tmp_path / "snn.onnx").path
    ort = OrtRunner(path, 1)
    for i in range(4):
        with torch.no_grad():
            ref = snn(x[i : i + 1]).numpy()
        np.testing.assert_allclose(ort.run([x[i : i + 1].numpy()])[0], ref, atol=1e-5)


@pytest.mark.tvm
def test_tvm_compiles_snn_and_matches_onnxruntime(tmp_path):
    from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.targets import get_profile, resolve_tvm_target

    snn, x = _snn(ConvBnPoolNet, (1, 8, 8), T=2)
    path = export_onnx(snn, (InputSpec("input", (1, 1, 8, 8)),), tmp_path / "snn.onnx").path
    (tmp_path / "tvm").mkdir()
    compile_onnx(path, tmp_path / "tvm", CompileConfig(target=resolve_tvm_target(get_profile("host"))))
    tvm_r, ort_r = load_tvm_runner(tmp_path / "tvm"), OrtRunner(path, 1)
    for i in range(3):
        xi = x[i : i + 1].numpy()
        np.testing.assert_allclose(tvm_r.run([xi])[0], ort_r.run([xi])[0], atol=1e-5)
