"""Run a TVM RPC tracker, or a device server that registers with one, in this process.

Both run TVM's own server code (``tvm.rpc.tracker`` / ``tvm.rpc.server``) in this process rather than through
the public ``Tracker``/``Server`` classes, which start a second Python process (``sys.executable -m
tvm.exec.popen_worker``) to host it. Why: under qemu-user that second interpreter costs another 18 s of TVM
import and needs ``sys.executable`` rewritten to go through the emulator; and the device-information function
registered here must live in the process whose forked children serve the sessions. One process per server
also means stopping a server is stopping one process.

A device server registers ``repfx.device_info`` (JSON: machine, emulated, CPUs, TVM version). Clients read it
to label results; a plain ``tvm.exec.rpc_server`` lacks it, and results from it say so.

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
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from repfx_deploy.compile.host import ensure_thread_pool_capacity
from repfx_deploy.errors import InputError, MeasureError
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint

log = logging.getLogger("repfx_deploy.measure")

DEVICE_INFO_FUNC = "repfx.device_info"
EMULATED_NOTE = "emulated: timings meaningless"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PORT_SEARCH = 100  # like TVM's servers: if the port is taken, try the next ones up to port + 100


def check_key(key: str) -> str:
    """A device key as trackers match it: letters, digits, ``.``, ``_``, ``-`` (no ``:``, which TVM splits on)."""
    if not _KEY.match(key or ""):
        raise InputError(f"Device key {key!r} is not valid.", "Use letters, digits, '.', '_' and '-', e.g. rpi4.")
    return key


@dataclass(frozen=True)
class ServeConfig:
    """A device server: registers as ``key`` with ``tracker``; listens on ``host:port`` (or the next free port).

    ``host`` defaults to loopback: an RPC server runs whatever code a client sends it, so bind it to a
    trusted network only (``0.0.0.0`` on a board behind your own router). ``emulated`` marks every result
    from this server as emulated (timings meaningless). ``custom_addr`` is the address the tracker hands to
    clients when the one it sees is not reachable from them.
    """

    tracker: RpcEndpoint
    key: str
    host: str = "127.0.0.1"
    port: int = 9090
    emulated: bool = False
    custom_addr: str | None = None

    def __post_init__(self) -> None:
        check_key(self.key)
        RpcEndpoint(self.host, self.port)  # validates both


def device_info(key: str, emulated: bool) -> dict:
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
    }


def _check_tracker(tracker: RpcEndpoint, timeout_s: float = 5.0) -> None:
    try:
        socket.create_connection(tracker.address, timeout=timeout_s).close()
    except OSError as e:
        raise MeasureError(
            f"Cannot reach the RPC tracker at {tracker}: {e}.",
            "Start it first (repfx-deploy device tracker --port PORT) and check the address.",
        ) from e


def _announce(ready: Callable[[dict], None] | None, doc: dict) -> None:
    if ready is not None:
        ready(doc)
    else:
        print(json.dumps(doc), flush=True)


def _wait_forever(thread) -> None:
    """Join TVM's (non-daemon) server thread; on Ctrl-C or SIGTERM end the process and its session children."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: _stop(143))
    try:
        thread.join()
    except KeyboardInterrupt:
        _stop(130)
    # the thread ended on its own: TVM gave up on the tracker (it retries for 60 s) or the socket failed
    raise MeasureError(
        "The RPC server stopped: the tracker went away or its socket failed.", "Restart the tracker, then this server."
    )


def _stop(code: int) -> None:
    for child in multiprocessing.active_children():  # sessions in progress
        child.kill()
    os._exit(code)  # TVM's threads are not daemons; a normal exit would wait on them forever


def serve_device(config: ServeConfig, ready: Callable[[dict], None] | None = None) -> None:
    """Serve until killed. Calls ``ready`` (default: print one JSON line) with the bound address once listening."""
    _check_tracker(config.tracker)
    # the pool of each session may then use every core (TVM's default is half of them on x86), and its
    # workers stop spinning soon enough for a session to exit promptly
    ensure_thread_pool_capacity()
    import tvm_ffi
    from tvm.rpc import server as tvm_server

    info = device_info(config.key, config.emulated)
    payload = json.dumps(info)
    tvm_ffi.register_global_func(DEVICE_INFO_FUNC, lambda: payload, override=True)
    logging.getLogger("RPCServer").setLevel(logging.WARNING)
    try:
        state = tvm_server.PopenRPCServerState(
            config.host,
            config.port,
            config.port + PORT_SEARCH,
            tracker_addr=config.tracker.address,
            key=config.key,
            custom_addr=config.custom_addr,
        )
    except (OSError, ValueError) as e:
        raise MeasureError(
            f"Cannot listen on {config.host}:{config.port}: {e}.", "Pick another --port or --host."
        ) from e
    _announce(
        ready,
        {
            "serving": config.key,
            "host": config.host,
            "port": state.port,
            "tracker": str(config.tracker),
            "pid": os.getpid(),
            **{k: info[k] for k in ("machine", "emulated", "tvm")},
        },
    )
    _wait_forever(state.thread)


def serve_tracker(host: str = "127.0.0.1", port: int = 9190, ready: Callable[[dict], None] | None = None) -> None:
    """Run a tracker until killed; ``ready`` gets the bound address (``port`` or the next free one)."""
    RpcEndpoint(host, port)
    from tvm.rpc import tracker as tvm_tracker

    logging.getLogger("RPCTracker").setLevel(logging.WARNING)
    try:
        state = tvm_tracker.PopenTrackerServerState(host, port, port + PORT_SEARCH)
    except (OSError, ValueError) as e:
        raise MeasureError(f"Cannot listen on {host}:{port}: {e}.", "Pick another --port or --host.") from e
    _announce(ready, {"tracker": f"{host}:{state.port}", "host": host, "port": state.port, "pid": os.getpid()})
    _wait_forever(state.thread)


def main(argv: list[str] | None = None) -> int:
    """``python -m repfx_deploy.measure.rpc.server``: the device server without the CLI (for the emulator)."""
    parser = argparse.ArgumentParser(prog="python -m repfx_deploy.measure.rpc.server", description=serve_device.__doc__)
    parser.add_argument("--tracker", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--custom-addr")
    parser.add_argument("--emulated", action="store_true")
    args = parser.parse_args(argv)
    try:
        serve_device(
            ServeConfig(
                RpcEndpoint.parse(args.tracker), args.key, args.host, args.port, args.emulated, args.custom_addr
            )
        )
    except (InputError, MeasureError) as e:
        print(f"error: {e.problem}\nfix: {e.fix}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
