"""The bytes TVM's RPC tracker and servers speak, read with bounds: a peer's length field never sizes a buffer.

Tracker messages are ``[int32 length][JSON]``; a device server's handshake is ``[int32 RPC_MAGIC][int32
length][key]`` answered by ``[int32 code][int32 length][key]``. The constants are TVM's (``tvm.rpc.base``;
a test checks they still agree), written here so that this module, like ``server``, needs only the standard
library.
"""

from __future__ import annotations

import json
import socket
import struct

RPC_MAGIC = 0xFF271
RPC_TRACKER_MAGIC = 0x2F271
RPC_CODE_SUCCESS = RPC_MAGIC + 0
RPC_CODE_MISMATCH = RPC_MAGIC + 2


class TrackerCode:
    """TVM's tracker message codes (``tvm.rpc.base.TrackerCode``)."""

    FAIL = -1
    SUCCESS = 0
    PUT = 3
    REQUEST = 4
    UPDATE_INFO = 5
    SUMMARY = 6
    GET_PENDING_MATCHKEYS = 7


TRACKER_FAIL, TRACKER_SUCCESS = TrackerCode.FAIL, TrackerCode.SUCCESS

MAX_MESSAGE_BYTES = 1 << 20  # tracker messages are small JSON lists; TVM's tracker caps them at 1 MiB too
MAX_KEY_BYTES = 4096  # "client:<matchkey> -timeout=N -repfx-auth=<64 hex>" is ~150 bytes


def int32(value: int) -> bytes:
    return struct.pack("<i", value)


def recv_exact(sock: socket.socket, nbytes: int) -> bytes:
    """Exactly ``nbytes`` from ``sock``; ``ConnectionError`` when the peer closes first."""
    chunks, got = [], 0
    while got < nbytes:
        chunk = sock.recv(min(nbytes - got, 65536))
        if not chunk:
            raise ConnectionError(f"connection closed after {got} of {nbytes} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_int32(sock: socket.socket) -> int:
    return int(struct.unpack("<i", recv_exact(sock, 4))[0])


def send_json(sock: socket.socket, value: object) -> None:
    data = json.dumps(value).encode("utf-8")
    sock.sendall(int32(len(data)) + data)


def recv_json(sock: socket.socket, max_bytes: int = MAX_MESSAGE_BYTES) -> object:
    """One tracker message; ``ValueError`` for a length outside ``1..max_bytes`` or text that is not JSON."""
    size = recv_int32(sock)
    if not 0 < size <= max_bytes:
        raise ValueError(f"message length {size} is outside 1..{max_bytes}")
    return json.loads(recv_exact(sock, size).decode("utf-8"))


def call(sock: socket.socket, message: list) -> object:
    """Send one tracker message and read its reply."""
    send_json(sock, message)
    return recv_json(sock)
