"""Tuning database reuse, trial allocation, and the config/target helpers (the last two need no TVM build)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from repfx_deploy.compile import CompileConfig, compile_onnx, host_target
from repfx_deploy.compile.host import (
    TUNING_DB_ENV,
    default_tuning_db,
    normalize_triple,
    target_hash,
)
from repfx_deploy.compile.tvm_tune import allocate_trials, count_records


class TwoConvNet(nn.Module):
    """Two convolutions, one of them most of the FLOPs: a small budget tunes exactly one kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


FAKE_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "num-cores": 2}


def test_allocate_trials_follows_flop_share_and_drops_small_kernels():
    assert allocate_trials([60.0, 30.0, 9.0, 1.0], 100, min_trials=8) == [61, 30, 9, 0]
    assert sum(allocate_trials([5.0, 3.0, 2.0], 64)) == 64


def test_allocate_trials_gives_everything_to_the_biggest_kernel_when_the_budget_is_tiny():
    assert allocate_trials([1.0, 5.0, 0.0], 8, min_trials=8) == [0, 8, 0]
    assert allocate_trials([1.0, 5.0], 4, min_trials=8) == [0, 0]


def test_config_stores_target_as_canonical_json_and_stays_hashable():
    a = CompileConfig(target=FAKE_TARGET, tuning_db=Path("/tmp/db"))
    b = CompileConfig(target=json.dumps(dict(reversed(list(FAKE_TARGET.items())))), tuning_db=Path("/tmp/db"))
    assert a == b and hash(a) == hash(b)
    assert a.target_dict == FAKE_TARGET and isinstance(a.target, str)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": {"kind": "llvm"}},  # no num-cores: MetaSchedule refuses it
        {"target": "not json"},
        {"target": FAKE_TARGET, "tune_trials": -1},
        {"target": FAKE_TARGET, "conv_layout": "NCHWc"},
        {"target": FAKE_TARGET, "tune_max_s": 0},
    ],
)
def test_config_rejects_invalid_values(kwargs):
    with pytest.raises(ValueError):
        CompileConfig(**kwargs)


def test_default_tuning_db_is_per_target_under_cache_or_env_root(monkeypatch, tmp_path):
    monkeypatch.delenv(TUNING_DB_ENV, raising=False)
    assert default_tuning_db(FAKE_TARGET) == Path("~/.cache/repfx-deploy/tuning").expanduser() / target_hash(FAKE_TARGET)
    monkeypatch.setenv(TUNING_DB_ENV, str(tmp_path))
    assert CompileConfig(target=FAKE_TARGET).tuning_db == tmp_path / target_hash(FAKE_TARGET)
    assert target_hash(FAKE_TARGET) != target_hash({**FAKE_TARGET, "num-cores": 4})


def test_conda_triple_is_normalized():
    assert normalize_triple("x86_64-conda-linux-gnu") == "x86_64-linux-gnu"
    assert normalize_triple("aarch64-linux-gnu") == "aarch64-linux-gnu"


@pytest.mark.tvm
def test_host_target_names_this_cpu_and_thread_count():
    t = host_target(threads=3)
    assert t["kind"] == "llvm" and t["num-cores"] == 3 and t["mcpu"] and "conda" not in t["mtriple"]


@pytest.mark.tvm
def test_second_compile_reuses_tuning_database_without_new_trials(tmp_path):
    torch.manual_seed(0)
    onnx_path = tmp_path / "two_conv.onnx"
    torch.onnx.export(TwoConvNet().eval(), (torch.randn(1, 3, 8, 8),), str(onnx_path), dynamo=True, opset_version=18)
    config = CompileConfig(target=host_target(2), tune_trials=8, tuning_db=tmp_path / "db")
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()

    first = compile_onnx(onnx_path, first_dir, config).manifest
    records = count_records(config.tuning_db)
    assert first["tuning"]["tasks_tuned"] == 1 and first["tune_trials"] == 8
    assert records >= 1
    assert first["kernels_tuned"] == 1
    choice = first["tuning"]["tasks"][0]["choice"]
    assert choice in ("default", "tuned")
    assert first["kernels"]["from_tuning_db"] == (1 if choice == "tuned" else 0)

    second = compile_onnx(onnx_path, second_dir, config).manifest
    assert second["tune_trials"] == 0 and second["tuning"]["tasks_tuned"] == 0
    assert second["tuning"]["tasks_reused"] == 1
    assert count_records(config.tuning_db) == records
    assert second["kernels_tuned"] == first["kernels_tuned"]
