import json

import onnx_graphs
import pytest
from typer.testing import CliRunner

from repfx_deploy.cli.app import app


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPFX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_onnx(tmp_path):
    return onnx_graphs.save_conv_classifier(tmp_path / "conv.onnx")


@pytest.mark.parametrize("target", ["host", "pixel1"])
def test_estimate_json_prints_latency_and_is_estimate(tiny_onnx, target):
    result = CliRunner().invoke(app, ["estimate", str(tiny_onnx), "--target", target, "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["is_estimate"] is True and doc["latency_ms"] > 0 and doc["target"] == target
    assert doc["method"] in ("lookup table", "analytic model") and doc["runtime"] and doc["accuracy"] and doc["layers"]


def test_estimate_state_dict_with_arch_says_estimate(tiny_state_dict, fixtures_dir):
    result = CliRunner().invoke(app, [
        "estimate", str(tiny_state_dict), "--arch", "tiny_models:TinyConvNet", "--python-path", str(fixtures_dir),
        "--input-shape", "1,3,8,8", "--target", "rpi4", "--layers",
    ])
    assert result.exit_code == 0, result.output
    assert "estimate (not a measurement)" in result.stdout and "uncalibrated" in result.stdout


def test_estimate_bad_target_exits_2(tiny_onnx):
    result = CliRunner().invoke(app, ["estimate", str(tiny_onnx), "--target", "toaster", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["type"] == "TargetError"


def test_estimate_bad_method_exits_2(tiny_onnx):
    result = CliRunner().invoke(app, ["estimate", str(tiny_onnx), "--method", "guess"])
    assert result.exit_code == 2
