"""A device server's accept loop: handshakes that cannot hold each other up, the token checked before any
session exists, one session at a time in a forked child that serves only its own folder.

TVM's loop (``tvm.rpc.server._listen_loop``) reads each handshake with a blocking ``recv`` on the thread that
accepts, so one client that connects and sends nothing stops the server for everyone. Here one thread
multiplexes everything with ``selectors``: the listening socket; every handshake in progress, each dropped
``handshake_timeout_s`` after it connected; the running session's process; and a tick every two seconds that
keeps the tracker registration fresh as TVM's loop does (a match key the tracker handed to a client that never
came is replaced, or the device would stay taken).

A handshake ``client:<matchkey> [opts]`` is accepted only with the match key this server gave the tracker for
its next session (each is used once, so a recorded handshake cannot be replayed) and, when the server has a
token, the proof over it (``auth.session_refusal``). Only then is a child forked (fork: it inherits TVM
already imported and the registered ``repfx.device_info``); it closes every other socket, enters a fresh
folder, installs the confined file functions (``files``) and runs TVM's C++ session loop on the socket. The
session ends when the client leaves, or is ended after the ``-timeout=`` the client asked for.

Standard library only at import; TVM inside functions (the emulated server runs this).
"""

from __future__ import annotations

import hmac
import logging
import math
import multiprocessing
import os
import secrets
import selectors
import shutil
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from repfx_deploy.errors import MeasureError, RpcAuthError
from repfx_deploy.measure.rpc import auth, files, framing
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
from repfx_deploy.measure.rpc.registration import TrackerLink

log = logging.getLogger("repfx_deploy.measure")

TICK_S = 2.0  # TVM's ping period
UNCLAIMED_S = 6.0  # a match key handed out but not used this long is replaced (TVM: 4 s plus one ping)
TRACKER_RETRY_S = 60.0  # how long a lost tracker is retried, as TVM's connect_with_retry does
MAX_PENDING = 256  # handshakes in progress at once; more connections are closed at once
_LISTEN, _SESSION = "listen", "session"


@dataclass(frozen=True)
class ListenerConfig:
    """What the loop serves: ``key`` at ``tracker`` on ``port`` (already bound), sessions under ``work_root``."""

    key: str
    tracker: RpcEndpoint
    port: int
    work_root: Path
    token: bytes | None = field(default=None, repr=False)
    custom_addr: str | None = None
    handshake_timeout_s: float = 5.0
    max_upload_bytes: int = files.DEFAULT_MAX_UPLOAD_BYTES

    def __post_init__(self) -> None:
        if self.handshake_timeout_s <= 0 or self.max_upload_bytes <= 0:
            raise ValueError("handshake_timeout_s and max_upload_bytes must be positive")


@dataclass
class _Handshake:
    conn: socket.socket
    addr: object
    deadline: float
    data: bytearray = field(default_factory=bytearray)
    keylen: int | None = None


@dataclass
class _Session:
    number: int
    proc: multiprocessing.process.BaseProcess
    conn: socket.socket
    addr: object
    folder: Path
    deadline: float
    timed_out: bool = False


class DeviceListener:
    """The loop: ``register()`` once (its errors are the user's to see), then ``run()`` until the process ends."""

    def __init__(self, sock: socket.socket, config: ListenerConfig) -> None:
        self.sock = sock
        self.config = config
        self.link = TrackerLink(config.tracker, config.key, config.port, config.token, config.custom_addr)
        self.selector = selectors.DefaultSelector()
        self.pending: dict[int, _Handshake] = {}
        self.matchkey: str | None = None
        self.unclaimed_since: float | None = None
        self.lost_since: float | None = None
        self.session: _Session | None = None
        self.sessions = 0

    def register(self) -> None:
        """Register with the tracker and offer the first session: ``MeasureError`` / ``RpcAuthError`` if not."""
        self.link.connect()
        self._offer()
        if self.link.sock is None:
            raise MeasureError(f"The RPC tracker at {self.config.tracker} dropped this server's registration.")

    def run(self) -> None:
        """Serve forever; ``MeasureError`` once the tracker has been unreachable for ``TRACKER_RETRY_S``."""
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ, _LISTEN)
        next_tick = time.monotonic() + TICK_S
        while True:
            for key, _ in self.selector.select(self._wait_s(next_tick)):
                if key.data == _LISTEN:
                    self._accept()
                elif key.data == _SESSION:
                    self._end_session()
                else:
                    self._read(key.data)
            now = time.monotonic()
            self._expire(now)
            if self.session is not None and now >= self.session.deadline:
                self._time_out_session()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + TICK_S

    def _wait_s(self, next_tick: float) -> float:
        deadlines = [next_tick, *(h.deadline for h in self.pending.values())]
        if self.session is not None:
            deadlines.append(self.session.deadline)
        return max(0.0, min(deadlines) - time.monotonic())

    # -- handshakes -------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors, say: the next round may do better
                log.warning("accepting a connection failed: %s", e)
                return
            if len(self.pending) >= MAX_PENDING:
                log.warning("dropped a connection from %s: %d handshakes already in progress", addr, MAX_PENDING)
                conn.close()
                continue
            conn.setblocking(False)
            handshake = _Handshake(conn, addr, time.monotonic() + self.config.handshake_timeout_s)
            self.pending[conn.fileno()] = handshake
            self.selector.register(conn, selectors.EVENT_READ, handshake)

    def _read(self, h: _Handshake) -> None:
        need = 8 if h.keylen is None else 8 + h.keylen
        try:
            chunk = h.conn.recv(need - len(h.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(h)
        if not chunk:
            return self._drop(h)
        h.data += chunk
        if len(h.data) >= 4 and struct.unpack("<i", h.data[:4])[0] != framing.RPC_MAGIC:
            return self._drop(h, "not a TVM RPC client (wrong magic number)")
        if h.keylen is None and len(h.data) == 8:
            h.keylen = struct.unpack("<i", h.data[4:8])[0]
            if not 0 < h.keylen <= framing.MAX_KEY_BYTES:
                return self._drop(h, f"a handshake key of {h.keylen} bytes")
        if h.keylen is not None and len(h.data) == 8 + h.keylen:
            self._decide(h, h.data[8:].decode("utf-8", "replace"))

    def _forget(self, h: _Handshake) -> None:
        self.pending.pop(h.conn.fileno(), None)
        try:
            self.selector.unregister(h.conn)
        except (KeyError, ValueError):
            pass

    def _drop(self, h: _Handshake, why: str | None = None) -> None:
        self._forget(h)
        h.conn.close()
        if why:
            log.info("dropped a connection from %s: %s", h.addr, why)

    def _expire(self, now: float) -> None:
        for h in [h for h in self.pending.values() if now >= h.deadline]:
            self._drop(h, f"no complete handshake within {self.config.handshake_timeout_s:g} s")

    def _refusal(self, parts: list[str]) -> str | None:
        if not parts or not parts[0].startswith("client:"):
            return "not a client handshake"
        if self.session is not None:
            return "a session is running (its match key is used up)"
        expected = "client:" + (self.matchkey or "")
        if self.matchkey is None or not hmac.compare_digest(parts[0].encode(), expected.encode()):
            return "unknown match key (not handed out by the tracker for this server, or already used)"
        return auth.session_refusal(parts[1:], self.matchkey, self.config.token)

    def _decide(self, h: _Handshake, key: str) -> None:
        self._forget(h)
        parts = key.split()
        why = self._refusal(parts)
        if why is not None:
            log.warning("refused a session from %s: %s", h.addr, why)
            try:
                h.conn.send(framing.int32(framing.RPC_CODE_MISMATCH))
            except OSError:
                pass
            h.conn.close()
            return
        server_key = f"server:{self.config.key}".encode()
        h.conn.setblocking(True)
        try:
            h.conn.sendall(framing.int32(framing.RPC_CODE_SUCCESS) + framing.int32(len(server_key)) + server_key)
        except OSError:
            h.conn.close()  # the client left; its match key stays valid for a retry
            return
        self._start_session(h, parts[1:])

    # -- sessions ---------------------------------------------------------------------------------------------

    def _start_session(self, h: _Handshake, opts: list[str]) -> None:
        self.matchkey = None  # used up: the next session gets a new one
        self.sessions += 1
        folder = self.config.work_root / f"session-{self.sessions}"
        timeout_s = _requested_timeout_s(opts)
        others = [self.sock, self.link.sock, *(p.conn for p in self.pending.values())]
        context = multiprocessing.get_context("fork")
        proc = context.Process(
            target=_serve_session,
            args=(h.conn, folder, self.config.max_upload_bytes, others),
            name=f"repfx-rpc-session-{self.sessions}",
        )
        try:
            folder.mkdir(mode=0o700, parents=True)
            proc.start()
        except OSError as e:  # out of processes, memory or disk: this session fails, the server goes on
            log.error("could not start session %d from %s: %s", self.sessions, h.addr, e)
            h.conn.close()
            shutil.rmtree(folder, ignore_errors=True)
            self._offer()
            return
        deadline = time.monotonic() + timeout_s if timeout_s else math.inf
        self.session = _Session(self.sessions, proc, h.conn, h.addr, folder, deadline)
        self.selector.register(proc.sentinel, selectors.EVENT_READ, _SESSION)
        log.info("session %d from %s", self.sessions, h.addr)

    def _time_out_session(self) -> None:
        s = self.session
        assert s is not None
        from tvm.rpc import _ffi_api

        log.info("session %d from %s ran past its timeout; ending it", s.number, s.addr)
        try:
            _ffi_api.ReturnException(
                s.conn.fileno(),
                "RPCSessionTimeoutError: the session ran past the timeout it asked for; ask for a longer one.",
            )
        except Exception:  # the client may be gone already
            pass
        s.timed_out, s.deadline = True, math.inf
        _kill_tree(s.proc)  # its sentinel then ends the session in the loop

    def _end_session(self) -> None:
        s = self.session
        assert s is not None
        self.session = None
        self.selector.unregister(s.proc.sentinel)
        s.proc.join()
        if s.proc.exitcode not in (0, None) and not s.timed_out:
            log.warning("session %d from %s ended with exit code %s", s.number, s.addr, s.proc.exitcode)
        s.conn.close()
        shutil.rmtree(s.folder, ignore_errors=True)
        self._offer()

    def stop(self) -> None:
        """End a running session (kill its process) and close every socket."""
        if self.session is not None:
            _kill_tree(self.session.proc)
            shutil.rmtree(self.session.folder, ignore_errors=True)
        for h in list(self.pending.values()):
            self._drop(h)
        self.link.close()
        self.sock.close()

    # -- the tracker ------------------------------------------------------------------------------------------

    def _offer(self) -> None:
        """A new match key, registered with the tracker: the server is free for the next session."""
        self.matchkey = f"{self.config.key}:{secrets.token_hex(16)}"
        self.unclaimed_since = None
        try:
            self.link.put(self.matchkey)
        except (OSError, ValueError, MeasureError) as e:
            self._lost(e)

    def _lost(self, error: Exception) -> None:
        log.warning("lost the RPC tracker at %s (%s); reconnecting", self.config.tracker, error)
        self.link.close()
        if self.lost_since is None:
            self.lost_since = time.monotonic()

    def _tick(self, now: float) -> None:
        if self.link.sock is None:
            return self._reconnect(now)
        if self.session is not None or self.matchkey is None:
            return
        try:
            pending = self.link.pending()
        except (OSError, ValueError, MeasureError) as e:
            return self._lost(e)
        if self.matchkey in pending:
            self.unclaimed_since = None
        elif self.unclaimed_since is None:
            self.unclaimed_since = now
        elif now - self.unclaimed_since >= UNCLAIMED_S:
            log.info("the match key handed out %.0f s ago was not used; offering a new one", UNCLAIMED_S)
            self._offer()

    def _reconnect(self, now: float) -> None:
        try:
            self.link.connect()
        except RpcAuthError:
            raise  # the tracker now holds another token: retrying cannot help
        except MeasureError as e:
            if self.lost_since is not None and now - self.lost_since > TRACKER_RETRY_S:
                raise MeasureError(
                    f"The RPC server stopped: the tracker at {self.config.tracker} has been unreachable for "
                    f"{TRACKER_RETRY_S:.0f} s.",
                    "Restart the tracker, then this server.",
                ) from e
            return
        self.lost_since = None
        log.info("registered again with the RPC tracker at %s", self.config.tracker)
        if self.session is None:
            self._offer()


def _requested_timeout_s(opts: list[str]) -> float | None:
    """The ``-timeout=SECONDS`` a client asked for (TVM's option); ``None``: none, or unreadable."""
    for opt in opts:
        if opt.startswith("-timeout="):
            try:
                value = float(opt[len("-timeout=") :])
            except ValueError:
                return None
            return value if value > 0 and math.isfinite(value) else None
    return None


def _kill_tree(proc: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL a session and any process it started (a session blocked in TVM's C++ loop ignores SIGTERM)."""
    try:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
    except Exception:  # psutil missing, or the process is gone already
        pass
    if proc.is_alive():
        proc.kill()


def _serve_session(conn: socket.socket, folder: Path, max_upload_bytes: int, others: list) -> None:
    """In the forked child: drop the parent's other sockets, confine the file functions, serve the session."""
    import signal

    # the server's handlers clean up the server (its work folder included): a session stopped alone just ends
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for other in others:
        if other is not None:
            try:
                other.close()
            except OSError:
                pass
    os.chdir(folder)
    files.install(folder, max_upload_bytes)
    from tvm.rpc import _ffi_api

    _ffi_api.ServerLoop(conn.fileno())
