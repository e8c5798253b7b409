"""A device server's registration at its tracker, the way TVM's server keeps it: one connection that says
who the server is (``UPDATE_INFO``), offers it for the next session under a fresh match key (``PUT``) and asks
which of its keys are still unclaimed (``GET_PENDING_MATCHKEYS``). Standard library only.
"""

from __future__ import annotations

import socket

from repfx_deploy.errors import MeasureError
from repfx_deploy.measure.rpc import framing
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
from repfx_deploy.measure.rpc.tracker import call, open_tracker

TRACKER_TIMEOUT_S = 5.0


class TrackerLink:
    """This server's registration at the tracker: one connection, reopened when it drops."""

    def __init__(self, tracker: RpcEndpoint, key: str, port: int, token: bytes | None, custom_addr: str | None) -> None:
        self.tracker, self.key, self.port, self.custom_addr = tracker, key, port, custom_addr
        self._token = token
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        """Connect, prove the token, and say who this server is (``UPDATE_INFO``); ``MeasureError`` if not."""
        sock = open_tracker(self.tracker, TRACKER_TIMEOUT_S, self._token)
        try:
            info = {"key": "server:" + self.key, "addr": [self.custom_addr, self.port]}
            reply = call(sock, [framing.TrackerCode.UPDATE_INFO, info], self.tracker)
        except (OSError, ValueError) as e:
            sock.close()
            raise MeasureError(f"The RPC tracker at {self.tracker} dropped this server's registration: {e}.") from e
        if reply != framing.TRACKER_SUCCESS:
            sock.close()
            raise MeasureError(f"The RPC tracker at {self.tracker} refused to register this server ({reply!r}).")
        self.sock = sock

    def _call(self, message: list) -> object:
        if self.sock is None:
            raise ConnectionError("not connected to the tracker")
        return call(self.sock, message, self.tracker)

    def put(self, matchkey: str) -> None:
        """Offer this server for one session under ``matchkey``."""
        reply = self._call([framing.TrackerCode.PUT, self.key, [self.port, matchkey], self.custom_addr])
        if reply != framing.TRACKER_SUCCESS:
            raise ValueError(f"the tracker refused the registration ({reply!r})")

    def pending(self) -> list:
        """The match keys of this connection the tracker has not handed out yet."""
        reply = self._call([framing.TrackerCode.GET_PENDING_MATCHKEYS])
        return reply if isinstance(reply, list) else []

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
