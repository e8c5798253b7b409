"""compile_onnx -> model.so + manifest.json -> load_tvm_runner: outputs, manifest, errors, threads, tuning reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from compile_kernels import export_onnx

from repfx_deploy.compile import (
    CompileConfig,
    compile_onnx,
    host_target,
    load_tvm_runner,
)
from repfx_deploy.errors import CompileError, InputShapeError
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.spec import InputSpec

pytestmark = pytest.mark.tvm


class ConvLinearNet(nn.Module):
    """Convolutions of vector-width (16) and odd (6) channel counts, a residual add, pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        y = F.relu(self.stem(x))
        y = F.relu(self.body(y) + y)
        return self.head(F.relu(self.down(y)).flatten(1))


@pytest.fixture(scope="module")
def conv_linear_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(ConvLinearNet(), (1, 3, 8, 8), tmp_path_factory.mktemp("onnx") / "conv_linear.onnx")


@pytest.fixture(scope="module")
def target() -> dict:
    return host_target(threads=2)


@pytest.fixture(scope="module")
def artifact(conv_linear_onnx, target, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact")
    db = tmp_path_factory.mktemp("empty_db")  # no records: every kernel gets the default schedule
    return compile_onnx(conv_linear_onnx, out, CompileConfig(target=target, tuning_db=db))


def _input(shape=(1, 3, 8, 8)) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def _ort(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    return OrtRunner(onnx_path, threads=1).run([x])[0]


def test_compiled_outputs_match_onnxruntime_within_1e4(artifact, conv_linear_onnx):
    x = _input()
    got = load_tvm_runner(artifact.library_path.parent, threads=1).run([x])
    assert len(got) == 1 and got[0].shape == (1, 10)
    np.testing.assert_allclose(got[0], _ort(conv_linear_onnx, x), atol=1e-4, rtol=1e-4)


def test_bind_returns_a_callable_that_reruns_the_model(artifact, conv_linear_onnx):
    runner = load_tvm_runner(artifact.library_path.parent, threads=1)
    call = runner.bind([_input()])
    first, second = call(), call()
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    assert runner.name == "tvm"


def test_artifact_folder_holds_only_the_library_and_manifest(artifact):
    assert sorted(p.name for p in artifact.library_path.parent.iterdir()) == ["manifest.json", "model.so"]


def test_artifact_loads_with_the_tvm_runtime_alone(artifact, conv_linear_onnx):
    x = _input()
    np.save(artifact.library_path.parent.parent / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, tvm
        lib = tvm.runtime.load_module({str(artifact.library_path)!r})
        vm = tvm.runtime.vm.VirtualMachine(lib, tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(np.load({str(artifact.library_path.parent.parent / 'x.npy')!r})))
        np.save(sys.argv[1], out.numpy())
        assert "onnx" not in sys.modules and "repfx_deploy" not in sys.modules, "needed more than the runtime"
        """
    )
    out_path = artifact.library_path.parent.parent / "y.npy"
    # One pool thread: this script uses TVM without repfx_deploy, so TVM's own spin count (300,000 yields)
    # applies, and a second worker on a core that another process keeps busy can delay exit by minutes
    # (README, "Known limits"); this test is about loading only.
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(out_path)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(out_path), _ort(conv_linear_onnx, x), atol=1e-4, rtol=1e-4)


def test_manifest_records_target_io_source_hash_and_kernel_counts(artifact, conv_linear_onnx, target):
    import hashlib

    import tvm

    m = json.loads(artifact.manifest_path.read_text())
    assert m == artifact.manifest
    assert m["target"] == target and m["tvm_version"] == tvm.__version__
    assert m["source_onnx"]["sha256"] == hashlib.sha256(conv_linear_onnx.read_bytes()).hexdigest()
    assert m["inputs"] == [{"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert [(o["shape"], o["dtype"]) for o in m["outputs"]] == [([1, 10], "float32")]
    assert m["calling_convention"]["params"] == "embedded" and m["calling_convention"]["transform_params"] is False
    assert m["conv_layout"] == "NHWC" and m["calling_convention"]["weights_prepacked"] is True
    k = m["kernels"]
    assert k["total"] == k["from_tuning_db"] + k["default_schedule"] + k["untuned"] and k["total"] > 0
    assert k["untuned"] == 0 and m["kernels_tuned"] == 0 and m["tune_trials"] == 0
    assert m["compile_s"] > 0
    assert artifact.to_dict()["manifest"] == m


def test_nchw_layout_without_default_schedule_still_matches_onnxruntime(conv_linear_onnx, target, tmp_path):
    config = CompileConfig(target=target, tuning_db=tmp_path / "db", conv_layout="NCHW", default_schedule=False)
    art = compile_onnx(conv_linear_onnx, tmp_path, config)
    assert art.manifest["conv_layout"] == "NCHW" and art.manifest["kernels_untuned"] == art.manifest["kernels"]["total"]
    x = _input()
    np.testing.assert_allclose(load_tvm_runner(tmp_path, threads=1).run([x])[0], _ort(conv_linear_onnx, x), atol=1e-4, rtol=1e-4)


def _qlinearconv_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    inits = [
        helper.make_tensor("x_scale", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("x_zp", TensorProto.UINT8, [], [128]),
        helper.make_tensor("w", TensorProto.UINT8, [2, 1, 1, 1], [130, 120]),
        helper.make_tensor("w_scale", TensorProto.FLOAT, [], [0.05]),
        helper.make_tensor("w_zp", TensorProto.UINT8, [], [128]),
        helper.make_tensor("y_scale", TensorProto.FLOAT, [], [0.2]),
        helper.make_tensor("y_zp", TensorProto.UINT8, [], [128]),
    ]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"], ["y"])
    graph = helper.make_graph(
        [node], "quantized_conv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_unsupported_operator_raises_compile_error_naming_it(target, tmp_path):
    onnx_path = _qlinearconv_onnx(tmp_path / "qconv.onnx")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CompileError) as info:
        compile_onnx(onnx_path, out, CompileConfig(target=target, tuning_db=tmp_path / "db"))
    assert "QLinearConv" in info.value.problem
    assert info.value.fix and "QDQ" in info.value.fix
    assert not any(out.iterdir())


def test_dynamic_input_dimension_needs_input_specs(target, tmp_path):
    import onnx

    path = export_onnx(ConvLinearNet(), (1, 3, 8, 8), tmp_path / "dyn.onnx")
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, str(path))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputShapeError):
        compile_onnx(path, out, CompileConfig(target=target, tuning_db=tmp_path / "db"))
    art = compile_onnx(path, out, CompileConfig(target=target, tuning_db=tmp_path / "db"),
                       input_specs=(InputSpec("input", (1, 3, 8, 8)),))
    assert art.manifest["inputs"][0]["shape"] == [1, 3, 8, 8]


def test_threads_setting_is_honored_and_reapplied_in_a_new_thread(artifact):
    folder = artifact.library_path.parent
    assert load_tvm_runner(folder, threads=1).threads == 1
    runner = load_tvm_runner(folder, threads=2)
    assert runner.threads == min(2, int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1)))
    seen = []
    call = runner.bind([_input()])

    def worker():
        call()
        seen.append(runner.threads)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [runner.threads]


def test_wrong_input_shape_raises_input_shape_error(artifact):
    with pytest.raises(InputShapeError):
        load_tvm_runner(artifact.library_path.parent, threads=1).run([_input((1, 3, 9, 9))])


AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}


def test_foreign_target_without_cross_compiler_raises_compile_error(conv_linear_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr("repfx_deploy.compile.link.shutil.which", lambda name: None)
    with pytest.raises(CompileError, match="cross compiler") as info:
        compile_onnx(conv_linear_onnx, tmp_path, CompileConfig(target=AARCH64, tuning_db=tmp_path / "db"))
    assert "g++-aarch64-linux-gnu" in info.value.fix


def test_tuning_for_a_foreign_target_raises_compile_error(conv_linear_onnx, tmp_path):
    with pytest.raises(CompileError, match="not this machine"):
        compile_onnx(conv_linear_onnx, tmp_path, CompileConfig(target=AARCH64, tune_trials=8, tuning_db=tmp_path / "db"))
