"""Run a TVM RPC tracker, or a device server that registers with one, in this process.

Both run in this process rather than through TVM's public ``Tracker``/``Server`` classes, which start a
second Python process (``sys.executable -m tvm.exec.popen_worker``) to host them. Why: under qemu-user that
second interpreter costs another 18 s of TVM import and needs ``sys.executable`` rewritten to go through the
emulator; and the device-information function registered here must live in the process whose forked
children serve the sessions. One process per server also means stopping a server is stopping one process.

The tracker is TVM's own (``tracker_server``) with a token check in front. The device server's accept loop
is ours (``listener``), since TVM's cannot bound a handshake or check a token; each session still runs TVM's
C++ session loop, with the file functions confined to the session's folder (``files``). Security policy
(``exposure``, ``auth``): a token is optional on loopback; any other address needs ``allow_remote`` and a
token, and prints a warning naming it. Uploads are capped at ``max_upload_mb``.

A device server registers ``repfx.device_info`` (JSON: machine, emulated, CPUs, TVM version, upload limit).
Clients read it to label results; a plain ``tvm.exec.rpc_server`` lacks it, and results from it say so.

This module must stay importable by a bare aarch64 Python with only TVM installed (the emulated server runs
``python -m repfx_deploy.measure.rpc.server``): standard library and TVM only, TVM inside functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repfx_deploy.compile.host import ensure_thread_pool_capacity
from repfx_deploy.errors import InputError, MeasureError
from repfx_deploy.measure.rpc.auth import load_token
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
from repfx_deploy.measure.rpc.exposure import bind_listener, check_exposure, warn_exposed

log = logging.getLogger("repfx_deploy.measure")

DEVICE_INFO_FUNC = "repfx.device_info"
EMULATED_NOTE = "emulated: timings meaningless"
DEFAULT_HANDSHAKE_TIMEOUT_S = 5.0
DEFAULT_MAX_UPLOAD_MB = 256
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_WORK_PREFIX = "repfx-rpc-work-"  # then the server's pid: a folder whose server is gone is removed at the next start
_WORK_FOLDER = re.compile(r"^repfx-rpc-work-(\d+)-")
_cleanup: list[Path] = []  # work folders removed when the process is stopped


def check_key(key: str) -> str:
    """A device key as trackers match it: letters, digits, ``.``, ``_``, ``-`` (no ``:``, which TVM splits on)."""
    if not _KEY.match(key or ""):
        raise InputError(f"Device key {key!r} is not valid.", "Use letters, digits, '.', '_' and '-', e.g. rpi4.")
    return key


def _check_limits(handshake_timeout_s: float, max_upload_mb: int | None = None) -> None:
    if not 0 < handshake_timeout_s <= 600:
        raise InputError(
            f"--handshake-timeout {handshake_timeout_s} is not in (0, 600] seconds.", "Pass a few seconds, e.g. 5."
        )
    if max_upload_mb is not None and not 0 < max_upload_mb <= 1 << 20:
        raise InputError(f"--max-upload-mb {max_upload_mb} is not in 1-1048576.", "Pass a size in MiB, e.g. 256.")


@dataclass(frozen=True)
class ServeConfig:
    """A device server: registers as ``key`` with ``tracker``; listens on ``host:port`` (or the next free port).

    ``host`` defaults to loopback; another address needs ``allow_remote`` and a token (``token_file``, else
    ``REPFX_RPC_TOKEN_FILE`` / ``REPFX_RPC_TOKEN``). ``emulated`` marks every result from this server as
    emulated (timings meaningless). ``custom_addr`` is the address the tracker hands to clients when the one
    it sees is not reachable from them. A client that sends no complete handshake within
    ``handshake_timeout_s`` is dropped; an upload over ``max_upload_mb`` MiB is refused.
    """

    tracker: RpcEndpoint
    key: str
    host: str = "127.0.0.1"
    port: int = 9090
    emulated: bool = False
    custom_addr: str | None = None
    token_file: Path | None = None
    allow_remote: bool = False
    handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB

    def __post_init__(self) -> None:
        check_key(self.key)
        RpcEndpoint(self.host, self.port)  # validates both
        _check_limits(self.handshake_timeout_s, self.max_upload_mb)


@dataclass(frozen=True)
class TrackerConfig:
    """A tracker on ``host:port`` (or the next free port); the same policy and token sources as ``ServeConfig``."""

    host: str = "127.0.0.1"
    port: int = 9190
    token_file: Path | None = None
    allow_remote: bool = False
    handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S

    def __post_init__(self) -> None:
        RpcEndpoint(self.host, self.port)
        _check_limits(self.handshake_timeout_s)


def device_info(key: str, emulated: bool, max_upload_bytes: int | None = None) -> dict:
    """What this process is: the payload of ``repfx.device_info``."""
    import tvm

    from repfx_deploy.measure.environment import cpu_model

    return {
        "server": "repfx-deploy",
        "key": key,
        "machine": platform.machine(),
        "emulated": emulated,
        # under qemu-user /proc/cpuinfo is the host's: naming it would pass x86 off as the board
        "cpu": "qemu-user emulation" if emulated else cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tvm": tvm.__version__,
        "max_upload_bytes": max_upload_bytes,
    }


def _remove_stale_work_folders() -> None:
    """Delete this user's server work folders whose server is gone (one killed with SIGKILL cannot clean up)."""
    root = Path(tempfile.gettempdir())
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _WORK_FOLDER.match(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:  # alive under another user, or unreadable: not ours to judge
            continue


def _announce(ready: Callable[[dict], None] | None, doc: dict) -> None:
    if ready is not None:
        ready(doc)
    else:
        print(json.dumps(doc), flush=True)


def _stop(code: int) -> None:
    for child in multiprocessing.active_children():  # sessions in progress
        child.kill()
    for folder in _cleanup:
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(code)  # TVM's threads are not daemons; a normal exit would wait on them forever


def _until_stopped(run: Callable[[], None]) -> None:
    """``run()``; on Ctrl-C or SIGTERM end the process and its session children at once."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: _stop(143))
    try:
        run()
    except KeyboardInterrupt:
        _stop(130)


def serve_device(config: ServeConfig, ready: Callable[[dict], None] | None = None) -> None:
    """Serve until killed. Calls ``ready`` (default: print one JSON line) with the bound address once listening.

    ``InputError`` for a refused address or an unreadable token; ``MeasureError`` (``RpcAuthError``) when the
    tracker cannot be reached or refuses this server's token.
    """
    from repfx_deploy.measure.rpc.listener import DeviceListener, ListenerConfig

    token = load_token(config.token_file)
    exposed = check_exposure("device server", config.host, allow_remote=config.allow_remote, has_token=bool(token))
    # the pool of each session may then use every core (TVM's default is half of them on x86), and its
    # workers stop spinning soon enough for a session to exit promptly
    ensure_thread_pool_capacity()
    import tvm_ffi

    max_upload_bytes = config.max_upload_mb << 20
    info = device_info(config.key, config.emulated, max_upload_bytes)
    payload = json.dumps(info)
    tvm_ffi.register_global_func(DEVICE_INFO_FUNC, lambda: payload, override=True)
    sock, port = bind_listener(config.host, config.port)
    _remove_stale_work_folders()
    work_root = Path(tempfile.mkdtemp(prefix=f"{_WORK_PREFIX}{os.getpid()}-{config.key}-")).resolve()
    _cleanup.append(work_root)
    listener = DeviceListener(
        sock,
        ListenerConfig(
            key=config.key,
            tracker=config.tracker,
            port=port,
            work_root=work_root,
            token=token,
            custom_addr=config.custom_addr,
            handshake_timeout_s=config.handshake_timeout_s,
            max_upload_bytes=max_upload_bytes,
        ),
    )
    try:
        listener.register()
    except BaseException:
        listener.stop()
        shutil.rmtree(work_root, ignore_errors=True)
        raise
    if exposed:
        warn_exposed(f"device server {config.key!r}", config.host, port)
    _announce(
        ready,
        {
            "serving": config.key,
            "host": config.host,
            "port": port,
            "tracker": str(config.tracker),
            "pid": os.getpid(),
            "token": token is not None,
            **{k: info[k] for k in ("machine", "emulated", "tvm")},
        },
    )
    _until_stopped(listener.run)


def serve_tracker(config: TrackerConfig, ready: Callable[[dict], None] | None = None) -> None:
    """Run a tracker until killed; ``ready`` gets the bound address (``port`` or the next free one)."""
    from repfx_deploy.measure.rpc.tracker_server import run_tracker

    token = load_token(config.token_file)
    exposed = check_exposure("tracker", config.host, allow_remote=config.allow_remote, has_token=bool(token))
    sock, port = bind_listener(config.host, config.port)
    thread = threading.Thread(
        target=run_tracker, args=(sock, token, config.handshake_timeout_s), name="repfx-rpc-tracker", daemon=True
    )
    thread.start()
    if exposed:
        warn_exposed("tracker", config.host, port)
    _announce(
        ready,
        {
            "tracker": f"{config.host}:{port}",
            "host": config.host,
            "port": port,
            "pid": os.getpid(),
            "token": token is not None,
        },
    )

    def wait() -> None:
        thread.join()
        raise MeasureError("The RPC tracker stopped: its socket failed.", "Restart it.")

    _until_stopped(wait)


def main(argv: list[str] | None = None) -> int:
    """``python -m repfx_deploy.measure.rpc.server``: the device server without the CLI (for the emulator)."""
    parser = argparse.ArgumentParser(prog="python -m repfx_deploy.measure.rpc.server", description=serve_device.__doc__)
    parser.add_argument("--tracker", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--custom-addr")
    parser.add_argument("--emulated", action="store_true")
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--allow-remote", action="store_true")
    parser.add_argument("--handshake-timeout", type=float, default=DEFAULT_HANDSHAKE_TIMEOUT_S)
    parser.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB)
    args = parser.parse_args(argv)
    try:
        serve_device(
            ServeConfig(
                RpcEndpoint.parse(args.tracker),
                args.key,
                args.host,
                args.port,
                args.emulated,
                args.custom_addr,
                token_file=args.token_file,
                allow_remote=args.allow_remote,
                handshake_timeout_s=args.handshake_timeout,
                max_upload_mb=args.max_upload_mb,
            )
        )
    except (InputError, MeasureError) as e:
        print(f"error: {e.problem}\nfix: {e.fix}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
