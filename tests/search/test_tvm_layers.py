"""The TVM kernel table: one entry per distinct kernel workload, cached on disk, only unseen kernels timed."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repfx_deploy.estimate.model import prepare_onnx
from repfx_deploy.search.tvm_layers import KernelTiming, table_path
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 16, 16)),)
FAST = KernelTiming(repeats=3, min_repeat_ms=0)
TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver5", "num-cores": 2}


class Net(nn.Module):
    """Two convolutions and a head whose width is the test's knob (the convolutions' kernels stay the same)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.b(F.relu(self.a(x)))), 1).flatten(1))


def _onnx(classes: int = 10):
    torch.manual_seed(0)
    return prepare_onnx(Net(classes).eval(), SPECS)


def _table(tmp_path):
    from repfx_deploy.compile.host import host_target
    from repfx_deploy.search.tvm_layers import TvmKernelTable

    return TvmKernelTable.open(host_target(1), 1, tmp_path, tuning_db=tmp_path / "tuning", timing=FAST)


def test_table_path_is_keyed_by_tvm_version_target_and_threads(tmp_path):
    a = table_path(TARGET, 1, "0.27.0", tmp_path)
    assert a.parent == tmp_path / "latency-lut" and a.name.startswith("tvm-0.27.0-")
    assert table_path(TARGET, 2, "0.27.0", tmp_path) != a
    assert table_path(TARGET, 1, "0.28.0", tmp_path) != a
    assert table_path({**TARGET, "mcpu": "skylake"}, 1, "0.27.0", tmp_path) != a


@pytest.mark.tvm
def test_every_kernel_gets_an_entry_and_a_second_estimate_times_nothing(tmp_path):
    table = _table(tmp_path)
    first = table.estimate(*_onnx())
    keys = {k.key for k in first.kernels}
    assert first.measured == len(keys) == len(table.entries) > 0
    assert (
        first.latency_ms == pytest.approx(sum(k.latency_ms * k.calls for k in first.kernels)) and first.latency_ms > 0
    )
    assert all(k.schedule == "default" and k.measured_now for k in first.kernels)
    doc = json.loads(table.path.read_text())  # strict JSON on disk, every entry with its figures
    assert set(doc["entries"]) == keys and all(
        e["min_ms"] >= 0 and e["runtime"] == "tvm" for e in doc["entries"].values()
    )
    again = _table(tmp_path).estimate(*_onnx())  # a fresh table object reads the file
    assert again.measured == 0 and again.latency_ms == first.latency_ms
    assert not any(k.measured_now for k in again.kernels)


@pytest.mark.tvm
def test_only_the_kernels_a_new_model_changes_are_timed(tmp_path):
    table = _table(tmp_path)
    dense = table.estimate(*_onnx(10))
    other_head = table.estimate(*_onnx(5))
    changed = {k.key for k in other_head.kernels} - {k.key for k in dense.kernels}
    assert 0 < other_head.measured == len(changed) < len(other_head.kernels)
    assert table.measured == dense.measured + other_head.measured


@pytest.mark.tvm
def test_tvm_predictor_tier_reads_the_kernel_table(tmp_path, monkeypatch):
    from repfx_deploy.passes.registry import PassRun
    from repfx_deploy.search.predictor import TieredPredictor
    from repfx_deploy.targets import get_profile

    monkeypatch.setenv("REPFX_TUNING_DB", str(tmp_path / "tuning"))
    p = TieredPredictor(get_profile("host"), "tvm", SPECS, threads=1, cache_root=tmp_path, kernel_timing=FAST)
    torch.manual_seed(0)
    prediction = p.predict(PassRun(Net().eval(), [], (), SPECS))
    assert prediction.source == "lut-tvm" and prediction.latency_ms > 0
    assert prediction.details["kernels_measured"] == prediction.details["kernels"] > 0
    assert p.table().path.is_file() and p.table().path.parent == tmp_path / "latency-lut"
