"""``repfx-deploy device ...``: a TVM RPC tracker, device servers that register with it, and what it holds.

On loopback (the default) a token is optional. On a network: ``repfx-deploy device token ~/.repfx/rpc-token``
once, copy that file to every machine, then ``device tracker --host 0.0.0.0 --allow-remote --token-file F`` and
on the board ``device serve --tracker HOST:PORT --key rpi4 --host 0.0.0.0 --allow-remote --token-file F``;
clients (``bench --rpc``, ``compress --rpc``, tuning) read ``REPFX_RPC_TOKEN_FILE=F`` (or ``REPFX_RPC_TOKEN``).
Here, with an emulated aarch64 board: ``--emulate aarch64``. TVM is imported only when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from repfx_deploy.cli.output import emit_json, handle_errors, setup_logging, stdout

device_app = typer.Typer(
    help="Devices over TVM RPC: run a tracker, serve a device to it, list what it holds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout; logs go to stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")]
Tracker = Annotated[str, typer.Option("--tracker", help="The tracker as HOST:PORT.")]
Host = Annotated[
    str,
    typer.Option(
        "--host",
        help="Address to listen on. Beyond loopback it needs --allow-remote and a token: RPC runs the code it is sent.",
    ),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the shared token (default: $REPFX_RPC_TOKEN_FILE, else $REPFX_RPC_TOKEN).",
    ),
]
AllowRemote = Annotated[
    bool,
    typer.Option("--allow-remote", help="Allow a --host beyond loopback (a token is then required)."),
]
HandshakeTimeout = Annotated[
    float,
    typer.Option("--handshake-timeout", help="Seconds a connection may take to finish its handshake.", min=0.1),
]


@device_app.command("tracker")
@handle_errors
def tracker_cmd(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 9190,
    token_file: TokenFile = None,
    allow_remote: AllowRemote = False,
    handshake_timeout: HandshakeTimeout = 5.0,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Run a TVM RPC tracker until stopped (Ctrl-C); prints its address once it listens."""
    setup_logging(verbose)
    from repfx_deploy.measure.rpc.server import TrackerConfig, serve_tracker

    def ready(doc: dict) -> None:
        if json_out:
            return emit_json(doc)
        stdout.print(f"tracker listening on {doc['tracker']}" + (" (token required)" if doc["token"] else ""))

    serve_tracker(TrackerConfig(host, port, token_file, allow_remote, handshake_timeout), ready=ready)


@device_app.command("serve")
@handle_errors
def serve_cmd(
    tracker: Tracker,
    key: Annotated[
        str, typer.Option("--key", help="The device's key in the tracker, e.g. rpi4 (a target profile's rpc_key).")
    ],
    host: Host = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port to listen on (or the next free one).")
    ] = 9090,
    custom_addr: Annotated[
        str | None, typer.Option("--custom-addr", help="Address the tracker gives clients, if not the one it sees.")
    ] = None,
    emulate: Annotated[
        str | None,
        typer.Option("--emulate", help="Run the server under qemu-user for this CPU (aarch64); implies --emulated."),
    ] = None,
    emulated: Annotated[
        bool, typer.Option("--emulated", help="Mark this server's timings as emulated (meaningless).")
    ] = False,
    token_file: TokenFile = None,
    allow_remote: AllowRemote = False,
    handshake_timeout: HandshakeTimeout = 5.0,
    max_upload_mb: Annotated[
        int, typer.Option("--max-upload-mb", min=1, help="Largest file a client may upload, in MiB.")
    ] = 256,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Serve this machine (or an emulated board) to a tracker as a device, until stopped."""
    setup_logging(verbose)
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.server import ServeConfig, serve_device

    config = ServeConfig(
        RpcEndpoint.parse(tracker),
        key,
        host,
        port,
        emulated or emulate is not None,
        custom_addr,
        token_file=token_file,
        allow_remote=allow_remote,
        handshake_timeout_s=handshake_timeout,
        max_upload_mb=max_upload_mb,
    )
    if emulate is not None:
        from repfx_deploy.measure.rpc.auth import load_token
        from repfx_deploy.measure.rpc.emulator import serve_emulated
        from repfx_deploy.measure.rpc.exposure import check_exposure

        # refused here, with the CLI's message, rather than after the emulator's 20 s of TVM import
        check_exposure("device server", host, allow_remote=allow_remote, has_token=bool(load_token(token_file)))
        serve_emulated(config, emulate)  # replaces this process; the emulated server prints its own JSON line

    def ready(doc: dict) -> None:
        if json_out:
            return emit_json(doc)
        label = " (emulated)" if doc["emulated"] else ""
        locked = ", token required" if doc["token"] else ""
        stdout.print(
            f"serving {doc['machine']}{label} as {doc['serving']!r} on {doc['host']}:{doc['port']}, "
            f"tracker {doc['tracker']}{locked}"
        )

    serve_device(config, ready=ready)


@device_app.command("list")
@handle_errors
def list_cmd(tracker: Tracker, token_file: TokenFile = None, json_out: Json = False, verbose: Verbose = False) -> None:
    """The devices a tracker holds, by key: servers, free, pending requests, addresses."""
    setup_logging(verbose)
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.tracker import device_queues

    endpoint = RpcEndpoint.parse(tracker)
    queues = device_queues(endpoint, token_file=token_file)
    if json_out:
        return emit_json({"tracker": str(endpoint), "devices": [q.to_dict() for q in queues.values()]})
    from rich.table import Table

    table = Table(title=f"devices at {endpoint}")
    for col in ("key", "servers", "free", "pending", "addresses"):
        table.add_column(col)
    for q in queues.values():
        table.add_row(q.key, str(q.servers), str(q.free), str(q.pending), ", ".join(q.addresses))
    stdout.print(table if queues else f"no devices registered at {endpoint}")


@device_app.command("token")
@handle_errors
def token_cmd(
    path: Annotated[Path, typer.Argument(help="File to write the new token to (readable by you only).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    json_out: Json = False,
) -> None:
    """Write a fresh random token for a tracker, its servers and clients (give each the same file)."""
    from repfx_deploy.measure.rpc.auth import TOKEN_FILE_ENV, write_token_file

    written = write_token_file(path, force=force)
    if json_out:
        return emit_json({"token_file": str(written)})
    stdout.print(
        f"wrote a new token to {written}; pass --token-file {written} to `device tracker` and `device serve`, "
        f"and set {TOKEN_FILE_ENV}={written} where bench, compress and compile connect"
    )
