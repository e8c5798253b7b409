"""CLI commands that compile with TVM: compile, bench, compress on the tiny model."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from repfx_deploy.cli.app import app

pytestmark = pytest.mark.tvm
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_compile_onnx_json_reports_artifact_and_verification(tmp_path, tiny_onnx):
    out = tmp_path / "art"
    result = _invoke("compile", tiny_onnx, "--target", "host", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (out / "model.so").exists() and (out / "manifest.json").exists()
    assert doc["verification"]["max_abs_error"] < 1e-4
    assert doc["tvm_target"]["kind"] == "llvm" and doc["tvm_target"]["num-cores"] >= 1
    assert doc["artifact"]["library_path"] == str(out / "model.so") and doc["artifact"]["manifest_path"] == str(out / "manifest.json")


def test_bench_all_on_torch_model_times_every_runtime_with_environment(tmp_path, tiny_state_dict, fixtures_dir):
    result = _invoke(
        "bench", tiny_state_dict, "--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir,
        "--input-shape", "1,3,8,8", "--runtime", "all", "--threads", "1", "--warmup", "1", "--repeats", "5", "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["latency_ms"]) == {"torch", "onnxruntime", "tvm"}
    for r in doc["results"].values():
        stats = r["stats"]
        assert stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] and stats["warmup"] == 1
        assert r["environment"]["threads"] == 1 and "apache-tvm" in r["environment"]["versions"]
    assert all(v["max_abs_error"] < 1e-4 for v in doc["verification"])


def test_bench_artifact_folder_runs_tvm_only(tmp_path, tiny_onnx):
    out = tmp_path / "art"
    assert _invoke("compile", tiny_onnx, "-o", out).exit_code == 0
    result = _invoke("bench", out, "--repeats", "5", "--warmup", "1", "--json")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["latency_ms"]) == ["tvm"]


def test_bench_refuses_torch_runtime_for_onnx_file(tiny_onnx):
    result = _invoke("bench", tiny_onnx, "--runtime", "torch")
    assert result.exit_code == 2 and "Cannot run torch" in result.output


def test_compress_example_recipe_via_cli(tmp_path, tiny_state_dict, fixtures_dir):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32), y=np.arange(6) % 4)
    out = tmp_path / "res"
    result = _invoke(
        "compress", tiny_state_dict, "--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir,
        "--input-shape", "1,3,8,8", "--calibration", data, "--eval-data", data, "-o", out, "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "ok" and doc["compressed"]["agreement"] == 1.0
    assert doc["baseline"]["accuracy"] == doc["compressed"]["accuracy"]
    assert (out / "report.md").exists()


def test_compile_for_pixel1_writes_objects_without_claiming_verification(tmp_path, tiny_onnx):
    out = tmp_path / "px"
    result = _invoke("compile", tiny_onnx, "--target", "pixel1", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (out / "model.tar").exists() and doc["verification"] is None
    assert doc["artifact"]["manifest"]["link"]["kind"] == "objects"


def test_bench_on_another_device_refused_with_reason(tiny_onnx):
    result = _invoke("bench", tiny_onnx, "--target", "rpi4")
    assert result.exit_code == 2 and "another device" in result.output


def test_compress_for_pixel1_reports_estimated_latency_with_its_error_for_both_models(tmp_path, tiny_state_dict, fixtures_dir):
    out = tmp_path / "res"
    result = _invoke(
        "compress", tiny_state_dict, "--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir,
        "--input-shape", "1,3,8,8", "--target", "pixel1", "-o", out, "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (out / "tvm" / "model.tar").exists() and doc["artifacts"]["tvm_library"] == "tvm/model.tar"
    on_disk = json.loads((out / "report.json").read_text())
    for report in (doc, on_disk):
        for side in ("baseline", "compressed"):
            assert report[side]["latency_ms"]["tvm"] > 0
            entry = report[side]["latency"]["tvm"]
            assert entry["source"] == "estimated" and entry["error_pct"] == 14.4 and entry["accuracy"]
    assert any("cannot run on this machine" in n for n in doc["notes"])
    assert "| latency tvm (ms, estimated, ±14.4 %) |" in (out / "report.md").read_text()
