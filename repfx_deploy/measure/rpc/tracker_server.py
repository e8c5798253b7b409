"""TVM's RPC tracker (``tvm.rpc.tracker``, tornado) with the token check in front of its messages.

With a token, a connection gets no answer but a refusal until it has passed ``auth.login``'s exchange:
``["repfx.hello", client_nonce]`` is answered with ``[SUCCESS, tracker_nonce, tracker_proof]`` and
``["repfx.auth", client_proof]`` with ``SUCCESS``; anything else before that, and a wrong proof, get
``[FAIL, "repfx: refused: ..."]`` and the connection is closed. That covers servers (``PUT``,
``UPDATE_INFO``) and clients (``REQUEST``, ``SUMMARY``) alike. Without a token the tracker is TVM's, which
TVM's own clients and servers can use, and ``repfx.hello`` is answered with ``[SUCCESS, None, None]``.

Either way a connection that has not finished its handshake (and, with a token, the exchange) within
``handshake_timeout_s`` is closed. TVM is imported inside functions only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import socket
import struct

from repfx_deploy.measure.rpc import auth, framing

log = logging.getLogger("repfx_deploy.measure")


@functools.cache
def _tracker_class():
    """The tracker classes, built on TVM's on first use (they subclass TVM's, so TVM is needed to define them)."""
    from tvm.rpc import tracker as tvm_tracker

    class Connection(tvm_tracker.TCPEventHandler):
        """One peer of the tracker; ``call_handler`` passes only authenticated messages on to TVM's."""

        def __init__(self, tracker, sock, addr) -> None:
            super().__init__(tracker, sock, addr)
            self._token: bytes | None = tracker.token
            self._authed = self._token is None
            self._nonces: tuple[str, str] | None = None
            self._ioloop.call_later(tracker.handshake_timeout_s, self._expire)

        def _expire(self) -> None:
            if self._sock is not None and (self._init_req_nbytes or not self._authed):
                log.info("tracker: dropped %s: no handshake within the timeout", self.name())
                self.close()

        def _init_conn(self, message) -> None:
            if len(message) != 4 or struct.unpack("<i", message)[0] != framing.RPC_TRACKER_MAGIC:
                log.info("tracker: dropped %s: not a tracker handshake", self.name())
                self.close()  # TVM's closes, then answers on the closed socket (an error in tornado's loop)
                return
            super()._init_conn(message)

        def _refuse(self, why: str) -> None:
            log.warning("tracker: refused %s: %s", self.name(), why)
            self.ret_value([framing.TRACKER_FAIL, auth.REFUSED + why])
            self.signal_close()

        def call_handler(self, args) -> None:
            if self._sock is None:  # closed while earlier bytes of the same read were handled
                return
            code = args[0] if isinstance(args, list) and args else None
            if code == auth.HELLO:
                self._hello(args)
            elif code == auth.AUTH:
                self._auth(args)
            elif not self._authed:
                self._refuse("this tracker requires a token; none was shown")
            else:
                super().call_handler(args)

        def _hello(self, args) -> None:
            if len(args) != 2 or not auth.valid_nonce(args[1]):
                return self._refuse("a malformed token handshake")
            if self._token is None:
                return self.ret_value([framing.TRACKER_SUCCESS, None, None])
            mine = auth.nonce()
            self._nonces = (args[1], mine)
            self.ret_value([framing.TRACKER_SUCCESS, mine, auth.proof(self._token, "tracker", *self._nonces)])

        def _auth(self, args) -> None:
            if self._token is None:
                return self.ret_value(framing.TRACKER_SUCCESS)
            nonces, self._nonces = self._nonces, None  # one try per exchange
            if nonces is None or len(args) != 2:
                return self._refuse("a token proof without the handshake before it")
            if not auth.verify(self._token, "client", nonces, args[1]):
                return self._refuse("wrong token")
            self._authed = True
            self.ret_value(framing.TRACKER_SUCCESS)

    class Tracker(tvm_tracker.TrackerServerHandler):
        def __init__(self, sock: socket.socket, token: bytes | None, handshake_timeout_s: float) -> None:
            self.token = token
            self.handshake_timeout_s = handshake_timeout_s
            super().__init__(sock, secrets.token_hex(16))

        def _on_event(self, _) -> None:
            while True:
                try:
                    conn, addr = self._sock.accept()
                except OSError:  # EAGAIN: all taken; anything else (EMFILE): TVM's loop would spin on it
                    return
                Connection(self, conn, addr)

    return Tracker


def run_tracker(sock: socket.socket, token: bytes | None, handshake_timeout_s: float) -> None:
    """Serve the tracker on the listening ``sock`` until the process ends (run it in a thread)."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    logging.getLogger("RPCTracker").setLevel(logging.WARNING)
    _tracker_class()(sock, token, handshake_timeout_s).run()
