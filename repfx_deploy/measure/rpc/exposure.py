"""Where an RPC tracker or device server may listen, and the socket it listens on.

Policy: on a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``) the token is optional. Any other
address (``0.0.0.0``, a LAN address, a name that resolves beyond loopback) needs ``--allow-remote`` and a
token both, and prints a warning naming the address: a device server runs the code its clients send.
Standard library only (``server`` imports this).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys

from repfx_deploy.errors import InputError, MeasureError
from repfx_deploy.measure.rpc.auth import TOKEN_ENV, TOKEN_FILE_ENV

PORT_SEARCH = 100  # like TVM's servers: if the port is taken, try the next ones up to port + 100


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (a name that does not resolve is not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_exposure(what: str, host: str, *, allow_remote: bool, has_token: bool) -> bool:
    """Refuse, before binding, a non-loopback ``host`` without ``allow_remote`` and a token; returns whether
    ``host`` is beyond loopback (then call ``warn_exposed`` once bound)."""
    if is_loopback(host):
        return False
    if not allow_remote:
        raise InputError(
            f"Listening on {host} would expose the RPC {what} beyond this machine, and an RPC device server "
            "runs whatever code its clients send.",
            "Keep --host 127.0.0.1 (reach it through an SSH tunnel), or pass --allow-remote with "
            f"--token-file PATH (or {TOKEN_FILE_ENV}) on a network you trust.",
        )
    if not has_token:
        raise InputError(
            f"--allow-remote on {host} needs a token: without one anyone who reaches the RPC {what} can use it.",
            f"Write one with `repfx-deploy device token PATH`, then pass --token-file PATH (or set "
            f"{TOKEN_FILE_ENV} or {TOKEN_ENV}) here and on every client.",
        )
    return True


def warn_exposed(what: str, host: str, port: int) -> None:
    """The loud line on stderr for a tracker or server reachable from the network."""
    sys.stderr.write(
        f"WARNING: the RPC {what} listens on {host}:{port}, reachable from other machines. Anyone holding the "
        "token can run code on the device servers of this tracker; the traffic is not encrypted. Use it on a "
        "network you trust.\n"
    )
    sys.stderr.flush()


def bind_listener(host: str, port: int, backlog: int = 16) -> tuple[socket.socket, int]:
    """A listening TCP socket on ``host:port``, or on the next free port up to ``port + PORT_SEARCH``."""
    try:
        family = socket.getaddrinfo(host, port, 0, 0, socket.IPPROTO_TCP)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise MeasureError(f"Cannot listen on {host}:{port}: {e}.", "Pick another --host.") from e
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for candidate in range(port, min(port + PORT_SEARCH, 65536)):
        try:
            sock.bind((host, candidate))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            sock.close()
            raise MeasureError(f"Cannot listen on {host}:{candidate}: {e}.", "Pick another --port or --host.") from e
        sock.listen(backlog)
        return sock, candidate
    sock.close()
    raise MeasureError(
        f"Ports {port}-{port + PORT_SEARCH - 1} on {host} are all taken.", "Pick another --port, or stop old servers."
    )
