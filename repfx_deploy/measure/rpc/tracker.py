"""Talk to a TVM RPC tracker with bounded waits: which devices it has, and a session on one of them.

TVM's own client (``rpc.connect_tracker(...).request(key)``) retries a refused connection for 60 s and then
waits forever for a device of that key, registered or not. Here every step has a deadline: connecting,
the handshake, and the wait for a free device; a key no server registered fails at once, naming the keys
that are there. When a token is configured (``auth``: ``REPFX_RPC_TOKEN_FILE`` or ``REPFX_RPC_TOKEN``, or
an explicit ``token_file``) every connection proves it to the tracker and to the device server.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from repfx_deploy.errors import DeviceUnreachableError, MeasureError
from repfx_deploy.measure.rpc import auth, framing
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint

if TYPE_CHECKING:
    from tvm.rpc.client import RPCSession

CONNECT_TIMEOUT_S = 5.0
TUNING_WAIT_S = 60.0
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


def open_tracker(endpoint: RpcEndpoint, timeout_s: float, token: bytes | None) -> socket.socket:
    """A tracker connection after the magic-number handshake and, with ``token``, the token exchange.

    ``MeasureError`` when there is no tracker there; ``RpcAuthError`` when the token does not match.
    """
    try:
        sock = socket.create_connection(endpoint.address, timeout=timeout_s)
    except OSError as e:
        raise MeasureError(f"Cannot reach the RPC tracker at {endpoint}: {e}.", _START_FIX) from e
    try:
        sock.sendall(framing.int32(framing.RPC_TRACKER_MAGIC))
        magic = framing.recv_int32(sock)
    except OSError as e:
        sock.close()
        raise MeasureError(f"{endpoint} did not answer as an RPC tracker: {e}.", _START_FIX) from e
    if magic != framing.RPC_TRACKER_MAGIC:
        sock.close()
        raise MeasureError(f"{endpoint} is not a TVM RPC tracker (wrong handshake).", _START_FIX)
    try:
        auth.login(sock, token, str(endpoint))
    except BaseException:
        sock.close()
        raise
    return sock


def call(sock: socket.socket, message: list, endpoint: RpcEndpoint) -> object:
    """One tracker request; ``RpcAuthError`` when the tracker refuses it for want of a token."""
    reply = framing.call(sock, message)
    reason = auth.refusal_reason(reply)
    if reason is not None:
        raise auth.refused_error(str(endpoint), reason)
    return reply


def device_queues(
    endpoint: RpcEndpoint, timeout_s: float = CONNECT_TIMEOUT_S, *, token_file: Path | None = None
) -> dict[str, DeviceQueue]:
    """The tracker's devices by key (keys that only ever had requests, no server, are left out)."""
    sock = open_tracker(endpoint, timeout_s, auth.load_token(token_file))
    try:
        reply = call(sock, [framing.TrackerCode.SUMMARY], endpoint)
    except (OSError, ValueError) as e:
        raise MeasureError(f"The RPC tracker at {endpoint} did not answer a summary request: {e}.", _START_FIX) from e
    finally:
        sock.close()
    if not isinstance(reply, list) or reply[0] != framing.TRACKER_SUCCESS or not isinstance(reply[1], dict):
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


def check_device(endpoint: RpcEndpoint, key: str, *, token_file: Path | None = None) -> DeviceQueue:
    """The tracker's queue for ``key``; ``MeasureError`` at once when the tracker is unreachable or no server has it."""
    queues = device_queues(endpoint, token_file=token_file)
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


def request_session(
    endpoint: RpcEndpoint,
    key: str,
    *,
    wait_s: float,
    session_timeout_s: float,
    token_file: Path | None = None,
) -> DeviceSession:
    """Ask the tracker for a device registered as ``key``; wait at most ``wait_s`` for one to be free.

    The server ends the session after ``session_timeout_s`` whatever the client does. Raises
    ``MeasureError`` at once when no server has that key, after ``wait_s`` when all of them stay busy, and
    ``DeviceUnreachableError`` when the handed-out server cannot be reached (or refuses the token).
    """
    from tvm import rpc

    token = auth.load_token(token_file)
    queue = check_device(endpoint, key, token_file=token_file)
    sock = open_tracker(endpoint, CONNECT_TIMEOUT_S, token)
    try:
        sock.settimeout(wait_s)
        reply = call(sock, [framing.TrackerCode.REQUEST, key, "", 1], endpoint)  # key, user, priority
    except TimeoutError as e:
        raise MeasureError(
            f"All {queue.servers} device(s) under key {key!r} stayed busy for {wait_s:.0f} s.",
            "Wait for the running measurement to finish, start another server with that key, or raise the wait.",
        ) from e
    except (OSError, ValueError) as e:
        raise MeasureError(f"The RPC tracker at {endpoint} dropped the request for {key!r}: {e}.", _START_FIX) from e
    finally:
        sock.close()  # the tracker forgets a request whose connection closed: nothing stays queued
    if not isinstance(reply, list) or reply[0] != framing.TRACKER_SUCCESS:
        raise MeasureError(f"The RPC tracker at {endpoint} refused the request for {key!r} ({reply!r}).", _START_FIX)
    host, port, matchkey = reply[1]
    try:
        session = rpc.connect(host, port, auth.session_key(matchkey, token), session_timeout_s)
    except Exception as e:  # TVM raises its own error types for a refused or failed handshake
        raise DeviceUnreachableError(
            f"The tracker gave device {host}:{port} for {key!r}, but connecting to it failed: {e}",
            "Check that the device server is running, reachable from here (its --host / --custom-addr), and "
            "holds the same token as the tracker.",
            address=f"{host}:{port}",
        ) from e
    return DeviceSession(session=session, key=key, address=f"{host}:{port}")


def metaschedule_session(rpc_config) -> RPCSession:
    """MetaSchedule's ``f_create_session`` for ``RPCRunner``: a session from ``request_session`` (bounded
    waits, and the token from the environment) in place of TVM's ``rpc_config.connect_server()``."""
    endpoint = RpcEndpoint(str(rpc_config.tracker_host), int(rpc_config.tracker_port))
    timeout_s = float(rpc_config.session_timeout_sec)
    wait_s = min(TUNING_WAIT_S, timeout_s)
    return request_session(endpoint, str(rpc_config.tracker_key), wait_s=wait_s, session_timeout_s=timeout_s).session
