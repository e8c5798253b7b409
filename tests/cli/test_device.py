"""`repfx-deploy device tracker / serve / list` and `bench --rpc` from the command line, on loopback."""

import json
import os
import subprocess
import sys
import time

import pytest
import rpc_devices
from typer.testing import CliRunner

from repfx_deploy.cli.app import app

pytestmark = pytest.mark.tvm
runner = CliRunner()
KEY = "repfx-cli-native"


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tracker_with_device():
    tracker = rpc_devices.start(["tracker", "--port", str(rpc_devices.free_port())])
    try:
        server = rpc_devices.start(rpc_devices.serve_args(tracker, KEY))
    except Exception:
        tracker.kill()
        raise
    rpc_devices.wait_for_key(tracker, KEY, 1)
    yield f"127.0.0.1:{tracker.port}"
    server.kill()
    tracker.kill()


def test_device_list_json_shows_the_registered_server(tracker_with_device):
    result = _invoke("device", "list", "--tracker", tracker_with_device, "--json")
    assert result.exit_code == 0, result.output
    (device,) = json.loads(result.stdout)["devices"]
    assert device["key"] == KEY and device["servers"] == 1 and device["free"] == 1
    assert device["addresses"][0].startswith("127.0.0.1:")


def test_bench_rpc_json_reports_device_latency_and_check_against_ort(tracker_with_device, tiny_onnx):
    result = _invoke(
        "bench", tiny_onnx, "--rpc", tracker_with_device, "--rpc-key", KEY, "--warmup", "1", "--repeats", "5", "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc["latency_ms"]) == ["tvm-rpc"]
    assert (doc["rpc"]["tracker"], doc["rpc"]["key"]) == (tracker_with_device, KEY)
    assert doc["rpc"]["servers"] == [{"address": doc["device"]["address"], "outcome": "measured"}]
    assert doc["results"]["tvm-rpc"]["runtime"] == "tvm-rpc" and doc["emulated"] is False
    assert doc["verification"][0]["max_abs_error"] < 1e-4


def test_bench_rpc_with_unknown_key_exits_2_naming_the_keys_there(tracker_with_device, tiny_onnx):
    started = time.monotonic()
    result = _invoke("bench", tiny_onnx, "--rpc", tracker_with_device, "--rpc-key", "no-such-board", "--json")
    assert result.exit_code == 2 and "Traceback" not in result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "MeasureError" and KEY in error["problem"] and "device serve" in error["fix"]
    assert time.monotonic() - started < 10  # refused before compiling anything


def test_bench_rpc_with_unreachable_tracker_exits_2_fast(tiny_onnx):
    started = time.monotonic()
    result = _invoke("bench", tiny_onnx, "--rpc", f"127.0.0.1:{rpc_devices.free_port()}")
    assert (
        result.exit_code == 2 and "Cannot reach the RPC tracker" in result.output and "Traceback" not in result.output
    )
    assert time.monotonic() - started < 10


def test_bench_rpc_with_malformed_address_or_host_runtime_exits_2(tiny_onnx):
    result = _invoke("bench", tiny_onnx, "--rpc", "no-port-here")
    assert result.exit_code == 2 and "is not a HOST:PORT address" in result.output
    result = _invoke("bench", tiny_onnx, "--rpc", "127.0.0.1:9", "--runtime", "onnxruntime")
    assert result.exit_code == 2 and "only the TVM runtime runs on the device" in result.output


def test_bench_foreign_target_without_rpc_points_at_rpc(tiny_onnx):
    result = _invoke("bench", tiny_onnx, "--target", "rpi4")
    assert result.exit_code == 2 and "--rpc HOST:PORT" in result.output


def test_serve_without_a_tracker_exits_2_with_the_fix():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "repfx_deploy.cli",
            "device",
            "serve",
            "--tracker",
            f"127.0.0.1:{rpc_devices.free_port()}",
            "--key",
            "k",
        ],
        cwd=rpc_devices.ROOT,
        env={**os.environ, "PYTHONPATH": str(rpc_devices.ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Cannot reach the RPC tracker" in proc.stderr and "device tracker" in proc.stderr


def test_serve_emulated_without_emulator_root_exits_2_naming_the_setup_script(tmp_path, monkeypatch):
    monkeypatch.setenv("REPFX_CACHE", str(tmp_path))
    result = _invoke("device", "serve", "--tracker", "127.0.0.1:9", "--key", "rpi4", "--emulate", "aarch64")
    assert result.exit_code == 2 and "setup_aarch64_emulator.sh" in result.output
    result = _invoke("device", "serve", "--tracker", "127.0.0.1:9", "--key", "bad key")
    assert result.exit_code == 2 and "is not valid" in result.output


def test_compress_rpc_measures_tvm_on_the_device_and_the_rest_here(
    tracker_with_device, tmp_path, tiny_state_dict, fixtures_dir
):
    out = tmp_path / "res"
    result = _invoke(
        "compress",
        tiny_state_dict,
        "--arch",
        "tiny_models:TinyConvNet",
        "--python-path",
        fixtures_dir,
        "--input-shape",
        "1,3,8,8",
        "--target",
        "host",
        "--rpc",
        tracker_with_device,
        "--key",
        KEY,
        "-o",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for side in ("baseline", "compressed"):
        sources = {rt: e["source"] for rt, e in doc[side]["latency"].items()}
        assert sources == {"torch": "measured-local", "onnxruntime": "measured-local", "tvm": "measured-rpc"}
        assert doc[side]["latency"]["tvm"]["device"]["key"] == KEY and doc[side]["latency_ms"]["tvm"] > 0
    device_check = [v for v in doc["verification"] if v["candidate"] == "tvm-rpc"]
    assert device_check and device_check[0]["max_abs_error"] < 1e-4
    assert "measured on device over RPC" in (out / "report.md").read_text()


def test_compress_rpc_with_unknown_key_exits_2_before_any_work(
    tracker_with_device, tmp_path, tiny_state_dict, fixtures_dir
):
    started = time.monotonic()
    result = _invoke(
        "compress",
        tiny_state_dict,
        "--arch",
        "tiny_models:TinyConvNet",
        "--python-path",
        fixtures_dir,
        "--input-shape",
        "1,3,8,8",
        "--rpc",
        tracker_with_device,
        "--key",
        "no-such-board",
        "-o",
        tmp_path / "o",
        "--json",
    )
    assert result.exit_code == 2 and json.loads(result.stdout)["error"]["type"] == "MeasureError"
    assert time.monotonic() - started < 30 and not (tmp_path / "o").exists()


def test_device_token_writes_a_private_token_file_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "rpc-token"
    result = _invoke("device", "token", path, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"token_file": str(path)}
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) >= 32
    first = path.read_text()
    result = _invoke("device", "token", path)
    assert result.exit_code == 2 and "--force" in result.output and path.read_text() == first
    assert _invoke("device", "token", path, "--force").exit_code == 0 and path.read_text() != first


def test_device_list_needs_the_token_of_a_tracker_that_has_one(tmp_path, monkeypatch):
    for name in rpc_devices.TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / "rpc-token"
    assert _invoke("device", "token", token).exit_code == 0
    tracker = rpc_devices.start(["tracker", "--port", str(rpc_devices.free_port()), "--token-file", str(token)])
    try:
        address = f"127.0.0.1:{tracker.port}"
        result = _invoke("device", "list", "--tracker", address, "--json")
        assert result.exit_code == 2 and json.loads(result.stdout)["error"]["type"] == "RpcAuthError"
        result = _invoke("device", "list", "--tracker", address, "--token-file", token, "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["devices"] == []
        monkeypatch.setenv("REPFX_RPC_TOKEN_FILE", str(token))  # what bench, compress and compile read
        assert _invoke("device", "list", "--tracker", address, "--json").exit_code == 0
    finally:
        tracker.kill()
