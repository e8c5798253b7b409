"""Attacks on the RPC tracker and device server, run against real ones on loopback.

A tracker and a device server that hold a token (the server with a 2 s handshake timeout and a 1 MiB upload
limit) serve the module. Each test is an attack that worked before the token, the confinement, the handshake
timeout and the upload limit existed: it reads, writes or deletes files outside the session folder, gets a
session or a registration without the token, blocks the server with an idle socket, uploads past the limit,
or listens beyond loopback unasked.
"""

import gc
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import rpc_devices
from typer.testing import CliRunner

from repfx_deploy.cli.app import app
from repfx_deploy.errors import RpcAuthError
from repfx_deploy.measure.rpc import auth, files, framing
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
from repfx_deploy.measure.rpc.exposure import is_loopback
from repfx_deploy.measure.rpc.remote import DeviceJob, RpcConfig, measure_on_device
from repfx_deploy.measure.rpc.tracker import device_queues, open_tracker, request_session
from repfx_deploy.measure.timing import TimingConfig

KEY = "repfx-sec-native"
FAST = TimingConfig(warmup=1, repeats=3, min_time_s=0.02)
HANDSHAKE_S = 2.0


@pytest.fixture(autouse=True)
def _no_token_from_the_caller(monkeypatch):
    """The client side of each test holds the token only when the test gives it one."""
    for name in rpc_devices.TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    return auth.write_token_file(tmp_path_factory.mktemp("token") / "rpc-token")


@pytest.fixture(scope="module")
def locked(token_file):
    """A tracker and a device server on loopback, both requiring ``token_file``'s token."""
    tracker = rpc_devices.start(["tracker", "--port", str(rpc_devices.free_port()), "--token-file", str(token_file)])
    try:
        server = rpc_devices.start(
            rpc_devices.serve_args(
                tracker,
                KEY,
                "--token-file",
                str(token_file),
                "--handshake-timeout",
                str(HANDSHAKE_S),
                "--max-upload-mb",
                "1",
            )
        )
        rpc_devices.wait_for_key(tracker, KEY, 1, token_file=token_file)
    except Exception:
        tracker.kill()
        raise
    yield {"tracker": tracker, "server": server, "endpoint": RpcEndpoint("127.0.0.1", tracker.port)}
    server.kill()
    tracker.kill()


class _Session(list):
    """``[remote, folder]``: a session on the locked server and its folder there (this machine)."""


@pytest.fixture
def session(locked, token_file):
    device = request_session(locked["endpoint"], KEY, wait_s=20, session_timeout_s=120, token_file=token_file)
    held = _Session([device.session, Path(device.session.get_function("tvm.rpc.server.workpath")(""))])
    del device
    yield held
    held.clear()  # pytest keeps the fixture's value until teardown ends: drop the session itself now
    gc.collect()
    rpc_devices.wait_for_key(locked["tracker"], KEY, 1, timeout_s=20, token_file=token_file)


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    import tiny_models
    import torch

    from repfx_deploy.compile import CompileConfig, compile_onnx
    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile, resolve_tvm_target

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("art")
    onnx = export_onnx(tiny_models.TinyConvNet().eval(), (InputSpec("input", (1, 3, 8, 8)),), root / "t.onnx").path
    out = root / "art"
    out.mkdir()
    compile_onnx(onnx, out, CompileConfig(target=resolve_tvm_target(get_profile("host")), tuning_db=root / "db"))
    return out


def _inputs():
    return [np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)]


def _refused(call, *args) -> str:
    with pytest.raises(RuntimeError) as info:  # TVM's RPCError carries the server's message
        call(*args)
    text = str(info.value)
    assert files.PATH_REFUSED in text or files.UPLOAD_REFUSED in text, text
    return text


# -- files: every operation stays in the session folder ------------------------------------------------------


@pytest.mark.tvm
def test_download_of_etc_passwd_by_traversal_or_absolute_path_is_refused(session):
    remote, folder = session
    for name in [
        "../../etc/passwd",
        "../" * (len(folder.parts) + 2) + "etc/passwd",
        "/etc/passwd",
        "x/../../etc/passwd",
    ]:
        text = _refused(remote.download, name)
        assert "root:" not in text


@pytest.mark.tvm
def test_upload_outside_the_folder_is_refused_absolute_dotdot_and_through_a_symlink(session, tmp_path):
    remote, folder = session
    outside = tmp_path / "written-by-a-client"
    _refused(remote.upload, bytearray(b"evil"), str(outside))  # absolute
    _refused(remote.upload, bytearray(b"evil"), "../written-by-a-client")  # beside the session folder
    (folder / "out").symlink_to(tmp_path, target_is_directory=True)  # a link inside pointing out
    _refused(remote.upload, bytearray(b"evil"), "out/written-by-a-client")
    (folder / "model.so").symlink_to(outside)  # a file link pointing out
    _refused(remote.upload, bytearray(b"evil"), "model.so")
    assert not outside.exists() and not (folder.parent / "written-by-a-client").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was written through the links either
    remote.upload(bytearray(b"fine"), "inside.bin")  # a plain name still works
    assert (folder / "inside.bin").read_bytes() == b"fine" and bytes(remote.download("inside.bin")) == b"fine"


@pytest.mark.tvm
def test_remove_download_and_load_outside_the_folder_are_refused(session, tmp_path):
    remote, folder = session
    victim = tmp_path / "victim.so"
    victim.write_bytes(b"keep me")
    (folder / "link").symlink_to(victim)
    for name in [str(victim), "../victim.so", "link/.."]:
        _refused(remote.remove, name)
    _refused(remote.download, "link")
    _refused(remote.load_module, str(victim))
    _refused(remote.load_module, "link")
    assert victim.read_bytes() == b"keep me"
    remote.remove("")  # MetaSchedule's cleanup asks for the folder itself: left for the server to delete
    assert folder.is_dir()


def test_confine_refuses_every_escape_and_keeps_plain_names(tmp_path):
    root = tmp_path.resolve()
    (root / "sub").mkdir()
    (root / "up").symlink_to(root.parent, target_is_directory=True)
    for bad in [
        "",
        ".",
        "/etc/passwd",
        "\\\\server\\share",
        "C:\\x",
        "..",
        "../x",
        "sub/../../x",
        "a/..",
        "up/x",
        "x\x00y",
        None,
        7,
    ]:
        with pytest.raises(files.PathRefused):
            files.confine(root, bad)
    assert files.confine(root, "sub/model.so") == root / "sub" / "model.so"
    assert files.confine(root, "", allow_root=True) == root


def test_upload_over_the_limit_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="over this server's limit of 1024 bytes"):
        files.upload(tmp_path, "big.so", b"x" * 1025, max_bytes=1024)
    assert list(tmp_path.iterdir()) == []


# -- the token -----------------------------------------------------------------------------------------------


def _raw_request(endpoint: RpcEndpoint, token_file: Path) -> tuple[str, int, str]:
    """Ask the tracker for the server as a client with the token would, without connecting to it."""
    sock = open_tracker(endpoint, 5.0, auth.load_token(token_file))
    try:
        sock.settimeout(20)
        reply = framing.call(sock, [framing.TrackerCode.REQUEST, KEY, "", 1])
    finally:
        sock.close()
    host, port, matchkey = reply[1]
    return host, port, matchkey


@pytest.mark.tvm
def test_device_session_without_or_with_a_wrong_token_is_refused_before_anything_loads(locked, token_file):
    from tvm import rpc

    host, port, matchkey = _raw_request(locked["endpoint"], token_file)  # the match key is not the secret
    server = psutil.Process(locked["server"].proc.pid)
    for key in [matchkey, auth.session_key(matchkey, b"not-the-token-at-all")]:
        with pytest.raises(RuntimeError):  # TVM's error for a refused handshake
            rpc.connect(host, port, key, 30)
        assert server.children() == []  # no session process was ever started: nothing uploaded or loaded
    log = locked["server"].log.read_text()
    assert "no token proof" in log and "wrong token proof" in log
    remote = rpc.connect(host, port, auth.session_key(matchkey, auth.load_token(token_file)), 30)  # same key, proof
    assert remote.get_function("runtime.NumThreads")() >= 1
    del remote
    rpc_devices.wait_for_key(locked["tracker"], KEY, 1, timeout_s=20, token_file=token_file)


@pytest.mark.tvm
def test_tracker_refuses_a_client_without_or_with_a_wrong_token(locked, tmp_path, monkeypatch):
    with pytest.raises(RpcAuthError, match="requires a token"):
        device_queues(locked["endpoint"])
    wrong = auth.write_token_file(tmp_path / "wrong")
    with pytest.raises(RpcAuthError, match="holds another token"):
        device_queues(locked["endpoint"], token_file=wrong)
    with pytest.raises(RpcAuthError, match="requires a token"):
        request_session(locked["endpoint"], KEY, wait_s=5, session_timeout_s=30)
    monkeypatch.setenv(auth.TOKEN_ENV, "a-wrong-token-of-enough-length")
    with pytest.raises(RpcAuthError):
        device_queues(locked["endpoint"])


@pytest.mark.tvm
def test_tracker_refuses_a_server_without_or_with_a_wrong_token(locked, token_file, tmp_path):
    sock = socket.create_connection(locked["endpoint"].address, timeout=5)  # a server registering by hand
    sock.sendall(framing.int32(framing.RPC_TRACKER_MAGIC))
    assert framing.recv_int32(sock) == framing.RPC_TRACKER_MAGIC
    reply = framing.call(sock, [framing.TrackerCode.PUT, "rogue", [9, "rogue:1"], None])
    assert auth.refusal_reason(reply) and sock.recv(1) == b""  # refused, and the connection closed
    wrong = auth.write_token_file(tmp_path / "wrong")
    for extra in [[], ["--token-file", str(wrong)]]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "repfx_deploy.cli",
                "device",
                *rpc_devices.serve_args(locked["tracker"], "rogue"),
                *extra,
                "--json",
            ],
            cwd=rpc_devices.ROOT,
            env={**os.environ, "PYTHONPATH": str(rpc_devices.ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and '"RpcAuthError"' in proc.stdout, proc.stdout + proc.stderr
    assert list(device_queues(locked["endpoint"], token_file=token_file)) == [KEY]


@pytest.mark.tvm
def test_bench_rpc_and_tuning_sessions_send_the_token_from_the_environment(locked, token_file, tmp_path, monkeypatch):
    import tiny_models
    import torch

    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.measure.rpc.tracker import metaschedule_session
    from repfx_deploy.pipeline.bench import BenchRequest, bench
    from repfx_deploy.spec import InputSpec

    torch.manual_seed(0)
    onnx = export_onnx(tiny_models.TinyConvNet().eval(), (InputSpec("input", (1, 3, 8, 8)),), tmp_path / "t.onnx").path
    request = BenchRequest(source=onnx, rpc=str(locked["endpoint"]), rpc_key=KEY, timing=FAST)
    started = time.monotonic()
    with pytest.raises(RpcAuthError, match="requires a token"):
        bench(request)
    assert time.monotonic() - started < 10  # refused before compiling anything
    monkeypatch.setenv(auth.TOKEN_FILE_ENV, str(token_file))
    doc = bench(request)
    assert doc["latency_ms"]["tvm-rpc"] > 0 and doc["device"]["key"] == KEY
    rpc_devices.wait_for_key(locked["tracker"], KEY, 1, timeout_s=20, token_file=token_file)
    from tvm.s_tir.meta_schedule.runner import RPCConfig

    config = RPCConfig("127.0.0.1", locked["tracker"].port, KEY, session_timeout_sec=30)
    remote = metaschedule_session(config)  # what tuning over RPC connects with (compile.tvm_tune_rpc)
    assert remote.get_function("runtime.NumThreads")() >= 1
    del remote
    rpc_devices.wait_for_key(locked["tracker"], KEY, 1, timeout_s=20, token_file=token_file)


# -- availability --------------------------------------------------------------------------------------------


@pytest.mark.tvm
def test_idle_sockets_do_not_block_a_real_client_and_are_dropped(locked, token_file, tiny_artifact):
    server, tracker = locked["server"], locked["tracker"]
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    idle.append(socket.create_connection(("127.0.0.1", tracker.port)))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(framing.int32(framing.RPC_MAGIC))  # a handshake begun and never finished
    idle.append(half)
    try:
        started = time.monotonic()
        config = RpcConfig(locked["endpoint"], KEY, wait_s=20, token_file=token_file)
        run = measure_on_device([DeviceJob("t", tiny_artifact)], [_inputs()], _inputs(), config, FAST)
        assert list(run.results) == ["t"] and not run.failures and run.results["t"].stats.median_ms > 0
        assert time.monotonic() - started < 30
        for sock in idle:  # each was closed by its peer after the handshake timeout
            sock.settimeout(HANDSHAKE_S + 8)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    rpc_devices.wait_for_key(tracker, KEY, 1, timeout_s=20, token_file=token_file)


@pytest.mark.tvm
def test_upload_over_the_server_limit_is_refused_by_the_server(session):
    remote, folder = session
    text = _refused(remote.upload, bytearray(b"x" * ((1 << 20) + 1)), "big.so")  # a client that does not check
    assert "over this server's limit" in text and "--max-upload-mb" in text and not (folder / "big.so").exists()


@pytest.mark.tvm
def test_artifact_over_the_server_limit_fails_with_a_clear_error_before_uploading(
    locked, token_file, tiny_artifact, tmp_path
):
    padded = tmp_path / "padded"
    shutil.copytree(tiny_artifact, padded)
    with (padded / "model.so").open("ab") as f:
        f.write(b"\0" * (2 << 20))
    config = RpcConfig(locked["endpoint"], KEY, wait_s=20, token_file=token_file)
    run = measure_on_device([DeviceJob("big", padded)], [_inputs()], _inputs(), config, FAST)
    assert not run.results and "over the 1 MiB the device server" in run.failures["big"]


# -- listening beyond loopback -------------------------------------------------------------------------------


def test_binding_beyond_loopback_needs_allow_remote_and_a_token(token_file):
    runner = CliRunner()
    for command in (
        ["device", "tracker", "--port", "9"],
        ["device", "serve", "--tracker", "127.0.0.1:9", "--key", "k", "--port", "9"],
    ):
        result = runner.invoke(app, [*command, "--host", "0.0.0.0", "--json"])
        assert result.exit_code == 2 and "--allow-remote" in result.output and "0.0.0.0" in result.output
        result = runner.invoke(app, [*command, "--host", "0.0.0.0", "--allow-remote", "--json"])
        assert result.exit_code == 2 and "needs a token" in result.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.20")


@pytest.mark.tvm
def test_tracker_beyond_loopback_with_allow_remote_and_a_token_warns_naming_the_address(token_file):
    tracker = rpc_devices.start(
        [
            "tracker",
            "--host",
            "0.0.0.0",
            "--port",
            str(rpc_devices.free_port()),
            "--allow-remote",
            "--token-file",
            str(token_file),
        ]
    )
    try:
        time.sleep(0.5)
        assert f"WARNING: the RPC tracker listens on 0.0.0.0:{tracker.port}" in tracker.log.read_text()
        assert tracker.doc["token"] is True
    finally:
        tracker.kill()


# -- the token's own rules -----------------------------------------------------------------------------------


def test_token_sources_precedence_and_short_tokens(tmp_path):
    from repfx_deploy.errors import InputError

    file = auth.write_token_file(tmp_path / "t")
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    from_file = file.read_text().strip().encode()
    env = {auth.TOKEN_ENV: "x" * 20, auth.TOKEN_FILE_ENV: str(file)}
    assert auth.load_token(None, env) == from_file  # the file named in the environment first
    assert auth.load_token(None, {auth.TOKEN_ENV: "x" * 20}) == b"x" * 20
    assert auth.load_token(None, {}) is None
    with pytest.raises(InputError, match="at least 16"):
        auth.load_token(None, {auth.TOKEN_ENV: "short"})
    with pytest.raises(InputError, match="Cannot read"):
        auth.load_token(tmp_path / "missing", {})
    with pytest.raises(InputError, match="exists"):
        auth.write_token_file(file)


def test_proofs_are_bound_to_their_purpose_and_values():
    token = b"t" * 32
    p = auth.proof(token, "session", "key:1")
    assert auth.verify(token, "session", ("key:1",), p)
    assert not auth.verify(token, "session", ("key:2",), p)  # another match key: no replay
    assert not auth.verify(token, "client", ("key:1",), p)  # another purpose: no reflection
    assert not auth.verify(b"u" * 32, "session", ("key:1",), p) and not auth.verify(token, "session", ("key:1",), None)
    assert auth.session_refusal([f"{auth.AUTH_OPT}{p}"], "key:1", token) is None
    assert auth.session_refusal(["-timeout=5"], "key:1", token) == "no token proof (the client holds no token)"


def test_framing_constants_are_tvms():
    from tvm.rpc import base

    assert (framing.RPC_MAGIC, framing.RPC_TRACKER_MAGIC) == (base.RPC_MAGIC, base.RPC_TRACKER_MAGIC)
    assert (framing.RPC_CODE_SUCCESS, framing.RPC_CODE_MISMATCH) == (base.RPC_CODE_SUCCESS, base.RPC_CODE_MISMATCH)
    for name in ("FAIL", "SUCCESS", "PUT", "REQUEST", "UPDATE_INFO", "SUMMARY", "GET_PENDING_MATCHKEYS"):
        assert getattr(framing.TrackerCode, name) == getattr(base.TrackerCode, name)


def test_work_folders_of_servers_that_are_gone_are_removed_at_the_next_start(tmp_path, monkeypatch):
    import tempfile

    from repfx_deploy.measure.rpc import server

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"repfx-rpc-work-{dead.pid}-k-abc"
    alive = tmp_path / f"repfx-rpc-work-{os.getpid()}-k-def"
    other = tmp_path / "repfx-rpc-work-notapid-k"
    for folder in (gone, alive, other):
        (folder / "session-1").mkdir(parents=True)
    server._remove_stale_work_folders()
    assert not gone.exists() and alive.is_dir() and other.is_dir()
