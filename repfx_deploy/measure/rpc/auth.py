"""The shared secret of an RPC tracker, its device servers and its clients: where it comes from, and how a
peer proves it holds it without sending it.

Every party reads the token from ``--token-file PATH`` where the command has that flag, else from the file
named by ``REPFX_RPC_TOKEN_FILE``, else from ``REPFX_RPC_TOKEN`` itself (never from the command line, which
other users see in ``ps``). A token has at least 16 characters; ``repfx-deploy device token PATH`` writes a
fresh one, readable by its owner only.

The token never crosses the network. A peer shows it holds it with an HMAC-SHA256 over values that are
fresh each time, checked with ``hmac.compare_digest``:

- tracker connections (``login``): the client sends a nonce, the tracker answers with its own nonce and its
  proof over both (so a client with a token refuses a tracker without it: mutual), then the client sends its
  proof. Until then a tracker that holds a token answers nothing else.
- device sessions (``session_key``): the client's handshake key carries a proof over the match key the
  tracker handed it. A server hands out each match key for one session only, so a recorded handshake
  cannot be replayed.

Nothing is encrypted: the token keeps peers without it out; it does not hide the traffic (models, inputs,
timings) from someone on the network path. Standard library only (``server`` imports this).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path

from repfx_deploy.errors import InputError, RpcAuthError
from repfx_deploy.measure.rpc import framing

log = logging.getLogger("repfx_deploy.measure")

TOKEN_ENV = "REPFX_RPC_TOKEN"
TOKEN_FILE_ENV = "REPFX_RPC_TOKEN_FILE"
MIN_TOKEN_CHARS = 16
HELLO, AUTH = "repfx.hello", "repfx.auth"  # tracker messages; TVM's own codes are small integers
AUTH_OPT = "-repfx-auth="  # in a device handshake key, after "client:<matchkey>"; TVM's server ignores it
REFUSED = "repfx: refused: "  # the text of a tracker's FAIL reply that says why
_MAX_NONCE_CHARS = 128
_TOKEN_FIX = (
    f"Give every party the same token: --token-file PATH on `device tracker` / `device serve`, and "
    f"{TOKEN_FILE_ENV}=PATH (or {TOKEN_ENV}) for the commands that connect."
)


def load_token(token_file: Path | str | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The token from ``token_file``, else ``$REPFX_RPC_TOKEN_FILE``, else ``$REPFX_RPC_TOKEN``; ``None`` if none.

    ``InputError`` for a file that cannot be read and for a token shorter than 16 characters. A file that
    others may read is used, with a warning.
    """
    env = os.environ if environ is None else environ
    path = token_file or env.get(TOKEN_FILE_ENV) or None
    if path is None:
        value = env.get(TOKEN_ENV, "").strip()
        return _checked(value, f"${TOKEN_ENV}") if value else None
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"Cannot read the RPC token file {path}: {e}.",
            "Pass the file the tracker's token is in (`repfx-deploy device token PATH` writes a new one).",
        ) from e
    if mode & 0o077:
        log.warning("the RPC token file %s can be read by other users (chmod 600 it)", path)
    return _checked(text, str(path))


def _checked(value: str, where: str) -> bytes:
    if len(value) < MIN_TOKEN_CHARS or any(c.isspace() for c in value):
        raise InputError(
            f"The RPC token in {where} has {len(value)} characters or contains spaces; at least "
            f"{MIN_TOKEN_CHARS} without spaces are needed.",
            "Write a new one with `repfx-deploy device token PATH` and give that file to every party.",
        )
    return value.encode("utf-8")


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def write_token_file(path: Path, *, force: bool = False) -> Path:
    """Write a fresh token to ``path``, readable and writable by its owner only; refuse an existing file."""
    path = Path(path).expanduser()
    if force:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise InputError(f"{path} exists.", "Pass --force to replace it (every party then needs the new one).") from e
    except OSError as e:
        raise InputError(f"Cannot write {path}: {e}.", "Pick a folder you can write to.") from e
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new_token() + "\n")
    return path


def nonce() -> str:
    return secrets.token_hex(16)


def proof(token: bytes, purpose: str, *values: str) -> str:
    """HMAC-SHA256 of ``purpose`` and ``values`` under ``token``; the purpose keeps one side's proof from
    passing as the other's."""
    message = "\x00".join((purpose, *values)).encode("utf-8")
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def verify(token: bytes, purpose: str, values: tuple[str, ...], claimed: object) -> bool:
    """Whether ``claimed`` is ``proof(token, purpose, *values)``, compared in constant time."""
    if not isinstance(claimed, str) or not claimed.isascii():
        return False
    return hmac.compare_digest(claimed.encode("ascii"), proof(token, purpose, *values).encode("ascii"))


def valid_nonce(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_NONCE_CHARS


def session_key(matchkey: str, token: bytes | None) -> str:
    """The key a client connects to a device server with: the match key, and the proof when there is a token."""
    return matchkey if token is None else f"{matchkey} {AUTH_OPT}{proof(token, 'session', matchkey)}"


def session_refusal(opts: list[str], matchkey: str, token: bytes | None) -> str | None:
    """Why a device server refuses a handshake whose key was ``client:<matchkey> *opts``; ``None``: accept."""
    if token is None:
        return None
    claimed = [o[len(AUTH_OPT) :] for o in opts if o.startswith(AUTH_OPT)]
    if not claimed:
        return "no token proof (the client holds no token)"
    if not verify(token, "session", (matchkey,), claimed[0]):
        return "wrong token proof"
    return None


def login(sock: socket.socket, token: bytes | None, where: str) -> None:
    """Prove to the tracker on ``sock`` (after the magic) that this side holds ``token``; check its proof too.

    Without a token nothing is sent (TVM's own tracker stays usable). ``RpcAuthError`` when the tracker
    refuses, holds no token, or holds another one.
    """
    if token is None:
        return
    mine = nonce()
    try:
        reply = framing.call(sock, [HELLO, mine])
    except (OSError, ValueError) as e:
        raise RpcAuthError(
            f"The RPC tracker at {where} does not speak the token handshake ({e}): it is TVM's own tracker, "
            "or an old repfx-deploy one.",
            f"Start it with `repfx-deploy device tracker --token-file PATH`, or unset {TOKEN_FILE_ENV} and "
            f"{TOKEN_ENV} to use it without a token.",
        ) from e
    if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == framing.TRACKER_SUCCESS):
        raise RpcAuthError(f"The RPC tracker at {where} answered the token handshake with {reply!r}.", _TOKEN_FIX)
    theirs, their_proof = reply[1], reply[2]
    if theirs is None:
        raise RpcAuthError(
            f"The RPC tracker at {where} holds no token, but this side has one: it may not be your tracker.",
            f"Restart the tracker with --token-file PATH, or unset {TOKEN_FILE_ENV} and {TOKEN_ENV} here.",
        )
    if not valid_nonce(theirs) or not verify(token, "tracker", (mine, theirs), their_proof):
        raise RpcAuthError(f"The RPC tracker at {where} holds another token than this side.", _TOKEN_FIX)
    try:
        answer = framing.call(sock, [AUTH, proof(token, "client", mine, theirs)])
    except (OSError, ValueError) as e:
        raise RpcAuthError(
            f"The RPC tracker at {where} dropped the connection at the token check: {e}.", _TOKEN_FIX
        ) from e
    if answer != framing.TRACKER_SUCCESS:
        raise RpcAuthError(f"The RPC tracker at {where} refused this side's token ({answer!r}).", _TOKEN_FIX)


def refusal_reason(reply: object) -> str | None:
    """The reason in a tracker's ``[FAIL, "repfx: refused: ..."]`` reply, else ``None``."""
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == framing.TRACKER_FAIL:
        if isinstance(reply[1], str) and reply[1].startswith(REFUSED):
            return reply[1][len(REFUSED) :]
    return None


def refused_error(where: str, reason: str) -> RpcAuthError:
    return RpcAuthError(f"The RPC tracker at {where} refused this request: {reason}.", _TOKEN_FIX)
