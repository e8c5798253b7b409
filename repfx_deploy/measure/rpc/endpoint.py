"""``HOST:PORT`` of a TVM RPC tracker, parsed with a clear error."""

from __future__ import annotations

from dataclasses import dataclass

from repfx_deploy.errors import InputError


@dataclass(frozen=True)
class RpcEndpoint:
    """A TCP address: ``host`` (a name, IPv4, or IPv6 written ``[::1]:9190``) and ``port`` (1-65535)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise InputError(
                f"RPC host {self.host!r} is empty or has spaces.", "Write it as HOST:PORT, e.g. 127.0.0.1:9190."
            )
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise InputError(
                f"RPC port {self.port!r} is not in 1-65535.", "Write it as HOST:PORT, e.g. 127.0.0.1:9190."
            )

    @classmethod
    def parse(cls, text: str) -> RpcEndpoint:
        """``"127.0.0.1:9190"``, ``"board.local:9190"`` or ``"[::1]:9190"`` -> ``RpcEndpoint``; else ``InputError``."""
        text = (text or "").strip()
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            host = ""  # a bare IPv6 address is ambiguous without brackets
        if not sep or not host or not port.isdigit():
            raise InputError(
                f"{text!r} is not a HOST:PORT address.",
                "Pass the tracker as HOST:PORT, e.g. --rpc 127.0.0.1:9190 (IPv6: [::1]:9190).",
            )
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)
