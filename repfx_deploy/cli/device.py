"""``repfx-deploy device ...``: a TVM RPC tracker, device servers that register with it, and what it holds.

On a board: ``repfx-deploy device serve --tracker HOST:PORT --key rpi4 --host 0.0.0.0``; here, with an
emulated aarch64 board: ``--emulate aarch64``. Then ``repfx-deploy bench MODEL --target rpi4 --rpc HOST:PORT``.
TVM is imported only when a command runs.
"""

from __future__ import annotations

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
    typer.Option("--host", help="Address to listen on. RPC runs any code it is sent: bind to a trusted network only."),
]


@device_app.command("tracker")
@handle_errors
def tracker_cmd(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 9190,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Run a TVM RPC tracker until stopped (Ctrl-C); prints its address once it listens."""
    setup_logging(verbose)
    from repfx_deploy.measure.rpc.server import serve_tracker

    def ready(doc: dict) -> None:
        emit_json(doc) if json_out else stdout.print(f"tracker listening on {doc['tracker']}")

    serve_tracker(host, port, ready=ready)


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
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Serve this machine (or an emulated board) to a tracker as a device, until stopped."""
    setup_logging(verbose)
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.server import ServeConfig, serve_device

    config = ServeConfig(RpcEndpoint.parse(tracker), key, host, port, emulated or emulate is not None, custom_addr)
    if emulate is not None:
        from repfx_deploy.measure.rpc.emulator import serve_emulated

        serve_emulated(config, emulate)  # replaces this process; the emulated server prints its own JSON line

    def ready(doc: dict) -> None:
        if json_out:
            return emit_json(doc)
        label = " (emulated)" if doc["emulated"] else ""
        stdout.print(
            f"serving {doc['machine']}{label} as {doc['serving']!r} on {doc['host']}:{doc['port']}, tracker {doc['tracker']}"
        )

    serve_device(config, ready=ready)


@device_app.command("list")
@handle_errors
def list_cmd(tracker: Tracker, json_out: Json = False, verbose: Verbose = False) -> None:
    """The devices a tracker holds, by key: servers, free, pending requests, addresses."""
    setup_logging(verbose)
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.tracker import device_queues

    endpoint = RpcEndpoint.parse(tracker)
    queues = device_queues(endpoint)
    if json_out:
        return emit_json({"tracker": str(endpoint), "devices": [q.to_dict() for q in queues.values()]})
    from rich.table import Table

    table = Table(title=f"devices at {endpoint}")
    for col in ("key", "servers", "free", "pending", "addresses"):
        table.add_column(col)
    for q in queues.values():
        table.add_row(q.key, str(q.servers), str(q.free), str(q.pending), ", ".join(q.addresses))
    stdout.print(table if queues else f"no devices registered at {endpoint}")
