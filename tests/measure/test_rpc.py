"""Measuring over TVM RPC on loopback: a tracker, a native device server and an aarch64 one under qemu-user.

The emulated server needs the root that scripts/setup_aarch64_emulator.sh builds; its tests skip (saying so)
without it. Everything else runs on the native server.
"""

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rpc_devices

from repfx_deploy.compile import CompileConfig, compile_onnx
from repfx_deploy.errors import InputError, MeasureError
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
from repfx_deploy.measure.rpc.remote import (
    RUNTIME,
    DeviceJob,
    RpcConfig,
    measure_on_device,
)
from repfx_deploy.measure.rpc.tracker import request_session
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.pipeline.bench import BenchRequest, bench
from repfx_deploy.targets import get_profile, resolve_tvm_target

pytestmark = pytest.mark.tvm

FAST = TimingConfig(warmup=2, repeats=5, min_time_s=0.05)
NATIVE, EMULATED = "repfx-test-native", "repfx-test-rpi4"


@pytest.fixture(scope="module")
def loopback():
    """Tracker + native server, torn down after the module; the emulated aarch64 server is launched now (its
    TVM import under qemu takes ~20-40 s) and waited for only by the tests that use it (``emulated_device``)."""
    from repfx_deploy.measure.rpc.emulator import emulator_python

    tracker = rpc_devices.start(["tracker", "--port", str(rpc_devices.free_port())])
    try:
        emulator_python()
        emulated_skip = None
    except MeasureError as e:
        emulated_skip = f"{e.problem} {e.fix}"
    emulated = (
        None
        if emulated_skip
        else rpc_devices.Launched(rpc_devices.serve_args(tracker, EMULATED, "--emulate", "aarch64"))
    )
    try:
        native = rpc_devices.start(rpc_devices.serve_args(tracker, NATIVE))
        rpc_devices.wait_for_key(tracker, NATIVE, 1)
    except Exception:
        for process in (emulated, tracker):
            if process is not None:
                process.kill()
        raise
    state = {
        "tracker": tracker,
        "endpoint": RpcEndpoint("127.0.0.1", tracker.port),
        "emulated_skip": emulated_skip,
        "emulated": emulated,
        "native": native,
    }
    yield state
    for process in (emulated, native, tracker):
        if process is not None:
            process.kill()


@pytest.fixture(scope="module")
def emulated_device(loopback):
    """The loopback tracker's endpoint once the emulated aarch64 server registered; skips when it cannot exist."""
    if loopback["emulated_skip"]:
        pytest.skip(loopback["emulated_skip"])
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is not installed (scripts/setup.sh installs it)")
    if not isinstance(loopback["emulated"], rpc_devices.DeviceProcess):
        loopback["emulated"] = loopback["emulated"].ready(timeout_s=180)
        rpc_devices.wait_for_key(loopback["tracker"], EMULATED, 1)
    return loopback["endpoint"]


def _inputs(seed=0):
    return [np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)]


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory, module_tiny_onnx):
    out = tmp_path_factory.mktemp("host-art")
    compile_onnx(
        module_tiny_onnx,
        out,
        CompileConfig(target=resolve_tvm_target(get_profile("host")), tuning_db=out.parent / "db"),
    )
    return out


@pytest.fixture(scope="module")
def module_tiny_onnx(tmp_path_factory):
    import tiny_models
    import torch

    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.spec import InputSpec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(tiny_models.TinyConvNet().eval(), (InputSpec("input", (1, 3, 8, 8)),), path).path


def test_endpoint_parse_rejects_bad_input_and_accepts_ipv6():
    for bad in ["", "localhost", "host:", ":9190", "host:port", "::1:9190", "host:70000"]:
        with pytest.raises(InputError):
            RpcEndpoint.parse(bad)
    assert RpcEndpoint.parse("[::1]:9190") == RpcEndpoint("::1", 9190)
    assert str(RpcEndpoint.parse(" board.local:9190 ")) == "board.local:9190"


def test_bench_on_native_device_times_on_device_and_agrees_with_onnxruntime(loopback, module_tiny_onnx):
    doc = bench(BenchRequest(source=module_tiny_onnx, rpc=str(loopback["endpoint"]), rpc_key=NATIVE, timing=FAST))
    record = doc["results"][RUNTIME]
    assert list(doc["latency_ms"]) == [RUNTIME] and doc["latency_ms"][RUNTIME] > 0
    assert record["stats"]["min_ms"] <= record["stats"]["median_ms"] <= record["stats"]["p90_ms"]
    assert record["stats"]["warmup"] == 2 and record["stats"]["repeats"] >= 5
    assert record["environment"]["versions"]["apache-tvm"].startswith("0.27") and record["environment"]["threads"] >= 1
    assert doc["emulated"] is False and "note" not in record and doc["device"]["key"] == NATIVE
    (check,) = doc["verification"]
    assert check["candidate"] == RUNTIME and check["max_abs_error"] < 1e-4 and check["samples"] == 4


def test_unknown_key_fails_fast_naming_registered_keys(loopback, host_artifact):
    started = time.monotonic()
    with pytest.raises(MeasureError, match="No device is registered under key 'no-such-board'") as info:
        measure_on_device(
            [DeviceJob("a", host_artifact)],
            [_inputs()],
            _inputs(),
            RpcConfig(loopback["endpoint"], "no-such-board"),
            FAST,
        )
    assert NATIVE in info.value.problem and "device serve" in info.value.fix
    assert time.monotonic() - started < 5


def test_unreachable_tracker_fails_fast(host_artifact):
    started = time.monotonic()
    with pytest.raises(MeasureError, match="Cannot reach the RPC tracker"):
        measure_on_device(
            [DeviceJob("a", host_artifact)],
            [_inputs()],
            _inputs(),
            RpcConfig(RpcEndpoint("127.0.0.1", rpc_devices.free_port()), NATIVE),
            FAST,
        )
    assert time.monotonic() - started < 5


def test_busy_device_fails_after_the_wait_not_forever(loopback):
    held = request_session(loopback["endpoint"], NATIVE, wait_s=5, session_timeout_s=60)  # the only native device
    try:
        started = time.monotonic()
        with pytest.raises(MeasureError, match="stayed busy for 1 s"):
            request_session(loopback["endpoint"], NATIVE, wait_s=1, session_timeout_s=60)
        assert time.monotonic() - started < 4
    finally:
        del held
    rpc_devices.wait_for_key(loopback["tracker"], NATIVE, 1)


def _drop_test_servers(loopback, key, count):
    servers = rpc_devices.start_many([rpc_devices.serve_args(loopback["tracker"], key) for _ in range(count)])
    rpc_devices.wait_for_key(loopback["tracker"], key, count)
    return servers


def _killer(servers):
    """``on_result`` that kills the server which produced the first result (a device dropping mid-run)."""

    def on_result(result):
        if not any(s.proc.poll() is not None for s in servers):
            port = int(result.device["address"].rsplit(":", 1)[1])
            next(s for s in servers if s.port == port).kill()

    return on_result


def test_device_dropped_mid_run_is_retried_on_another_device(loopback, host_artifact):
    servers = _drop_test_servers(loopback, "repfx-test-drop2", 2)
    try:
        started = time.monotonic()
        run = measure_on_device(
            [DeviceJob("first", host_artifact), DeviceJob("second", host_artifact)],
            [_inputs()],
            _inputs(),
            RpcConfig(loopback["endpoint"], "repfx-test-drop2", retries=1, wait_s=10),
            FAST,
            on_result=_killer(servers),
        )
        assert list(run.results) == ["first", "second"] and not run.failures
        assert run.results["first"].attempts == 1 and run.results["second"].attempts == 2
        assert run.results["first"].device["address"] != run.results["second"].device["address"]
        killed, measured = run.results["second"].to_dict()["servers"]  # which server measured what, in the record
        assert killed["address"] == run.results["first"].device["address"] and killed["outcome"].startswith("dropped")
        assert measured == {"address": run.results["second"].device["address"], "outcome": "measured"}
        assert time.monotonic() - started < 60
    finally:
        for s in servers:
            s.kill()


def test_device_dropped_with_no_other_reports_failure_and_keeps_completed(loopback, host_artifact):
    servers = _drop_test_servers(loopback, "repfx-test-drop1", 1)
    try:
        started = time.monotonic()
        run = measure_on_device(
            [DeviceJob("first", host_artifact), DeviceJob("second", host_artifact), DeviceJob("third", host_artifact)],
            [_inputs()],
            _inputs(),
            RpcConfig(loopback["endpoint"], "repfx-test-drop1", retries=1, wait_s=5),
            FAST,
            on_result=_killer(servers),
        )
        assert list(run.results) == ["first"] and run.results["first"].stats.median_ms > 0
        assert set(run.failures) == {"second", "third"} and "dropped" in run.failures["second"]
        assert time.monotonic() - started < 60
    finally:
        for s in servers:
            s.kill()


def _kill_when_serving(servers):
    """A thread that kills the first server seen serving a session (it has a session child): a device server
    killed in the middle of a measurement. It is frozen (SIGSTOP) the moment its session starts, so the kill
    cannot come after the measurement ended. ``killed`` holds its address once done."""
    import os
    import signal

    import psutil

    killed: list[str] = []

    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for s in servers:
                if psutil.Process(s.proc.pid).children():
                    os.killpg(s.proc.pid, signal.SIGSTOP)
                    time.sleep(0.5)
                    s.kill()
                    killed.append(f"127.0.0.1:{s.port}")
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def test_bench_rpc_with_its_server_killed_mid_measurement_is_retried_on_another_and_says_which(
    loopback, module_tiny_onnx
):
    key = "repfx-test-kill2"
    servers = _drop_test_servers(loopback, key, 2)
    try:
        watcher, killed = _kill_when_serving(servers)
        doc = bench(BenchRequest(source=module_tiny_onnx, rpc=str(loopback["endpoint"]), rpc_key=key, timing=FAST))
        watcher.join(5)
        (gone,) = killed
        dropped, measured = doc["rpc"]["servers"]
        assert dropped["address"] == gone and dropped["outcome"].startswith("dropped")
        assert measured["outcome"] == "measured" and measured["address"] == doc["device"]["address"] != gone
        assert doc["results"][RUNTIME]["attempts"] == 2 and doc["latency_ms"][RUNTIME] > 0
        assert doc["verification"][0]["max_abs_error"] < 1e-4
    finally:
        for s in servers:
            s.kill()


def test_handed_out_server_that_cannot_be_reached_is_passed_over_for_another(loopback, host_artifact):
    from repfx_deploy.measure.rpc import framing

    key = "repfx-test-ghost"
    ghost = socket.create_connection(("127.0.0.1", loopback["tracker"].port))  # registers a server that is not there
    ghost.sendall(framing.int32(framing.RPC_TRACKER_MAGIC))
    assert framing.recv_int32(ghost) == framing.RPC_TRACKER_MAGIC
    dead_port = rpc_devices.free_port()
    assert (
        framing.call(ghost, [framing.TrackerCode.UPDATE_INFO, {"key": f"server:{key}", "addr": [None, dead_port]}]) == 0
    )
    assert framing.call(ghost, [framing.TrackerCode.PUT, key, [dead_port, f"{key}:0.5"], None]) == 0
    real = rpc_devices.start(rpc_devices.serve_args(loopback["tracker"], key))
    try:
        rpc_devices.wait_for_key(loopback["tracker"], key, 2)
        run = measure_on_device(
            [DeviceJob("a", host_artifact)],
            [_inputs()],
            _inputs(),
            RpcConfig(loopback["endpoint"], key, wait_s=10),
            FAST,
        )
        # the ghost first (the tracker hands out servers in the order they registered), then the real one
        assert list(run.results) == ["a"] and run.results["a"].attempts == 2
        assert run.results["a"].device["address"] == f"127.0.0.1:{real.port}"
        ghost_try, measured = run.results["a"].to_dict()["servers"]
        assert ghost_try["address"] == f"127.0.0.1:{dead_port}" and "connecting to it failed" in ghost_try["outcome"]
        assert measured["outcome"] == "measured"
    finally:
        ghost.close()
        real.kill()


def test_session_process_killed_alone_leaves_its_server_serving(loopback):
    import signal

    import psutil

    held = request_session(loopback["endpoint"], NATIVE, wait_s=10, session_timeout_s=60)
    (child,) = psutil.Process(loopback["native"].proc.pid).children()
    child.send_signal(signal.SIGTERM)  # the session alone: its server must clean up after it and go on
    child.wait(10)
    del held
    rpc_devices.wait_for_key(loopback["tracker"], NATIVE, 1, timeout_s=20)
    again = request_session(loopback["endpoint"], NATIVE, wait_s=10, session_timeout_s=60)
    assert again.session.get_function("runtime.NumThreads")() >= 1
    del again
    rpc_devices.wait_for_key(loopback["tracker"], NATIVE, 1, timeout_s=20)


def test_artifact_for_another_cpu_is_refused_without_retry(loopback, module_tiny_onnx, tmp_path):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is not installed (scripts/setup.sh installs it)")
    profile = get_profile("rpi4")
    compile_onnx(
        module_tiny_onnx,
        tmp_path,
        CompileConfig(target=resolve_tvm_target(profile), link=profile.link, tuning_db=tmp_path / "db"),
    )
    run = measure_on_device(
        [DeviceJob("arm", tmp_path)], [_inputs()], _inputs(), RpcConfig(loopback["endpoint"], NATIVE), FAST
    )
    assert not run.results and "built for aarch64, but the device" in run.failures["arm"]


def test_rpc_device_threads_and_outputs_match_local_run(loopback, host_artifact):
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner

    samples = [_inputs(s) for s in range(2)]
    run = measure_on_device(
        [DeviceJob("t", Path(host_artifact))],
        samples,
        samples[0],
        RpcConfig(loopback["endpoint"], NATIVE, threads=1),
        FAST,
    )
    result = run.results["t"]
    assert result.threads == 1
    local = load_tvm_runner(host_artifact, 1)
    for got, sample in zip(result.outputs, samples):
        np.testing.assert_allclose(got[0], local.run(sample)[0], rtol=0, atol=1e-6)


@pytest.mark.rpc_tuning
def test_metaschedule_tuning_over_rpc_times_on_the_device_and_reuses_the_database(loopback, module_tiny_onnx, tmp_path):
    from repfx_deploy.compile.config import RpcTuning
    from repfx_deploy.compile.tvm_tune import count_records, read_choices

    target = resolve_tvm_target(get_profile("host"))
    db = tmp_path / "db"
    # the RPC path is taken, and fails before building
    with pytest.raises(MeasureError, match="No device is registered"):
        (tmp_path / "never").mkdir()
        compile_onnx(
            module_tiny_onnx,
            tmp_path / "never",
            CompileConfig(
                target=target,
                tune_trials=8,
                tuning_db=db,
                tune_rpc=RpcTuning(str(loopback["endpoint"]), "no-such-board"),
            ),
        )
    config = CompileConfig(
        target=target, tune_trials=8, tuning_db=db, tune_rpc=RpcTuning(str(loopback["endpoint"]), NATIVE)
    )
    (tmp_path / "first").mkdir()
    first = compile_onnx(module_tiny_onnx, tmp_path / "first", config).manifest["tuning"]
    assert first["trials_run"] == 8 and first["tasks_tuned"] == 1 and count_records(db) > 0
    records = [
        json.loads(line)[1] for line in (db / "database_tuning_record.json").read_text().splitlines() if line.strip()
    ]
    assert any(max(r[1]) < 1.0 for r in records)  # candidates really ran there (a failed run is recorded as 1e10 s)
    (choice,) = read_choices(db).values()
    # A/B timed on the device
    assert choice["choice"] in ("tuned", "default") and choice["default_us"] > 0 and choice["tuned_us"] > 0
    (tmp_path / "second").mkdir()
    second = compile_onnx(module_tiny_onnx, tmp_path / "second", config).manifest
    assert (
        second["tuning"]["trials_run"] == 0 and second["tuning"]["tasks_reused"] == 1 and second["kernels_tuned"] == 1
    )


# The emulated device last: its server has been starting (TVM import under qemu) while the tests above ran.
def test_aarch64_artifact_runs_on_emulated_device_agrees_and_is_labeled_emulated(emulated_device, module_tiny_onnx):
    doc = bench(
        BenchRequest(source=module_tiny_onnx, target="rpi4", rpc=str(emulated_device), rpc_key=EMULATED, timing=FAST)
    )
    assert doc["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    assert doc["device"]["machine"] == "aarch64" and doc["emulated"] is True
    assert doc["results"][RUNTIME]["note"] == doc["note"] == "emulated: timings meaningless"
    assert doc["verification"][0]["max_abs_error"] <= 1e-4 and doc["verification"][0]["cosine"] > 0.9999


def test_compile_rpc_verifies_cross_compiled_artifact_on_the_emulated_device(
    emulated_device, module_tiny_onnx, tmp_path
):
    from repfx_deploy.pipeline.compile import CompileRequest, compile_model

    doc = compile_model(
        CompileRequest(
            source=module_tiny_onnx,
            out_dir=tmp_path / "rpi4",
            target="rpi4",
            rpc=str(emulated_device),
            rpc_key=EMULATED,
        )
    )
    check = doc["verification"]
    assert check["device"] == {
        "key": EMULATED,
        "address": check["device"]["address"],
        "machine": "aarch64",
        "emulated": True,
    }
    assert check["max_abs_error"] <= 1e-4 and (tmp_path / "rpi4" / "verification.json").is_file()
