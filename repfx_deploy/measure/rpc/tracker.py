"""Talk to a TVM RPC tracker with bounded waits: which devices it has, and a session on one of them.

TVM's own client (``rpc.connect_tracker(...).request(key)``) retries a refused connection for 60 s and then
waits forever for a device of that key, registered or not. Here every step has a deadline: connecting,
the handshake, and the wait for a free device; a key no server registered fails at once, naming the keys
that are there.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from repfx_deploy.errors import MeasureError
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint

if TYPE_CHECKING:
    from tvm.rpc.client import RPCSession

CONNECT_TIMEOUT_S = 5.0
_START_FIX = "Start it (repfx-deploy device tracker), or check --rpc HOST:PORT."


@dataclass(frozen=True)
class DeviceQueue:
    """Servers registered under one key: ``free`` of them idle, ``pending`` requests waiting, their addresses."""

    key: str
    servers: int
    free: int
    pending: int
    addresses: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def _open(endpoint: RpcEndpoint, timeout_s: float) -> socket.socket:
    """A tracker connection after the magic-number handshake; ``MeasureError`` when there is no tracker there."""
    from tvm.rpc import base

    try:
        sock = socket.create_connection(endpoint.address, timeout=timeout_s)
    except OSError as e:
        raise MeasureError(f"Cannot reach the RPC tracker at {endpoint}: {e}.", _START_FIX) from e
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except (OSError, RuntimeError, struct.error) as e:
        sock.close()
        raise MeasureError(f"{endpoint} did not answer as an RPC tracker: {e}.", _START_FIX) from e
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise MeasureError(f"{endpoint} is not a TVM RPC tracker (wrong handshake).", _START_FIX)
    return sock


def _call(sock: socket.socket, message: list):
    from tvm.rpc import base

    base.sendjson(sock, message)
    return base.recvjson(sock)


def device_queues(endpoint: RpcEndpoint, timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, DeviceQueue]:
    """The tracker's devices by key (keys that only ever had requests, no server, are left out)."""
    from tvm.rpc import base

    sock = _open(endpoint, timeout_s)
    try:
        reply = _call(sock, [base.TrackerCode.SUMMARY])
    except (OSError, RuntimeError, ValueError) as e:
        raise MeasureError(f"The RPC tracker at {endpoint} did not answer a summary request: {e}.", _START_FIX) from e
    finally:
        sock.close()
    if not isinstance(reply, list) or reply[0] != base.TrackerCode.SUCCESS:
        raise MeasureError(f"The RPC tracker at {endpoint} refused a summary request ({reply!r}).", _START_FIX)
    addresses: dict[str, list[str]] = {}
    for server in reply[1].get("server_info", []):
        key = str(server.get("key", "")).removeprefix("server:")
        host, port = server.get("addr", ["?", "?"])
        addresses.setdefault(key, []).append(f"{host}:{port}")
    queues = reply[1].get("queue_info", {})
    return {
        key: DeviceQueue(
            key,
            len(addrs),
            int(queues.get(key, {}).get("free", 0)),
            int(queues.get(key, {}).get("pending", 0)),
            tuple(sorted(addrs)),
        )
        for key, addrs in sorted(addresses.items())
    }


def check_device(endpoint: RpcEndpoint, key: str) -> DeviceQueue:
    """The tracker's queue for ``key``; ``MeasureError`` at once when the tracker is unreachable or no server has it."""
    queues = device_queues(endpoint)
    if key not in queues:
        known = ", ".join(f"{k} ({q.servers})" for k, q in queues.items()) or "none"
        raise MeasureError(
            f"No device is registered under key {key!r} at the tracker {endpoint}; registered keys: {known}.",
            f"Start one on the device: repfx-deploy device serve --tracker {endpoint} --key {key} "
            "(or pass --rpc-key with one of the registered keys).",
        )
    return queues[key]


@dataclass
class DeviceSession:
    """An open RPC session on one device: ``session`` (TVM's ``RPCSession``) and the server's address."""

    session: RPCSession
    key: str
    address: str


def request_session(endpoint: RpcEndpoint, key: str, *, wait_s: float, session_timeout_s: float) -> DeviceSession:
    """Ask the tracker for a device registered as ``key``; wait at most ``wait_s`` for one to be free.

    The server ends the session after ``session_timeout_s`` whatever the client does. Raises
    ``MeasureError`` at once when no server has that key, after ``wait_s`` when all of them stay busy,
    and when the handed-out server cannot be reached.
    """
    from tvm import rpc
    from tvm.rpc import base

    queue = check_device(endpoint, key)
    sock = _open(endpoint, CONNECT_TIMEOUT_S)
    try:
        sock.settimeout(wait_s)
        reply = _call(sock, [base.TrackerCode.REQUEST, key, "", 1])
    except TimeoutError as e:
        raise MeasureError(
            f"All {queue.servers} device(s) under key {key!r} stayed busy for {wait_s:.0f} s.",
            "Wait for the running measurement to finish, start another server with that key, or raise the wait.",
        ) from e
    except (OSError, RuntimeError, ValueError) as e:
        raise MeasureError(f"The RPC tracker at {endpoint} dropped the request for {key!r}: {e}.", _START_FIX) from e
    finally:
        sock.close()  # the tracker forgets a request whose connection closed: nothing stays queued
    if not isinstance(reply, list) or reply[0] != base.TrackerCode.SUCCESS:
        raise MeasureError(f"The RPC tracker at {endpoint} refused the request for {key!r} ({reply!r}).", _START_FIX)
    host, port, matchkey = reply[1]
    try:
        session = rpc.connect(host, port, matchkey, session_timeout_s)
    except Exception as e:  # TVM raises its own error types for a refused or failed handshake
        raise MeasureError(
            f"The tracker gave device {host}:{port} for {key!r}, but connecting to it failed: {e}.",
            "Check that the device server is running and reachable from here (its --host / --custom-addr).",
        ) from e
    return DeviceSession(session=session, key=key, address=f"{host}:{port}")
