"""``repfx-deploy estimate``: a labeled latency estimate for a device that is not reachable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from repfx_deploy.cli.options import (
    Arch,
    InputShape,
    Json,
    PythonPath,
    Target,
    TargetFile,
    Threads,
    TrustPickle,
    Verbose,
    load_options,
)
from repfx_deploy.cli.output import emit_json, handle_errors, setup_logging, stdout

if TYPE_CHECKING:
    from repfx_deploy.estimate.model import ModelSource
    from repfx_deploy.targets import EstimatorMethod

_METHODS: dict[str, EstimatorMethod | None] = {
    "lookup": "lookup table",
    "lookup-table": "lookup table",
    "analytic": "analytic model",
    "auto": None,
}


@handle_errors
def estimate(
    model: Annotated[Path, typer.Argument(help="PyTorch model file or .onnx file.")],
    target: Target = None,
    target_file: TargetFile = None,
    threads: Threads = 0,
    method: Annotated[
        str, typer.Option("--method", help="auto (the profile's), lookup (host only) or analytic.")
    ] = "auto",
    layers: Annotated[bool, typer.Option("--layers", help="Print the per-layer breakdown (always in --json).")] = False,
    arch: Arch = None,
    python_path: PythonPath = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Estimate latency on a device without running there: a per-layer lookup table (host) or analytic model."""
    setup_logging(verbose)
    from repfx_deploy.errors import InputError
    from repfx_deploy.estimate import estimate_latency
    from repfx_deploy.ingest.loader import load_model
    from repfx_deploy.targets import get_profile

    if method not in _METHODS:
        raise InputError(f"Unknown --method {method!r}.", f"Use one of {', '.join(_METHODS)}.")
    profile = get_profile(target, target_file)
    loaded = load_model(model, load_options(arch, python_path, trust_pickle, input_shape))
    source: ModelSource
    if loaded.module is not None:
        source = loaded.module
    else:
        assert loaded.onnx_path is not None  # a loaded model is a torch module or an ONNX file
        source = loaded.onnx_path
    result = estimate_latency(source, loaded.input_specs, profile, method=_METHODS[method], threads=threads)
    doc = {"model": str(model), **result.to_dict()}
    if json_out:
        return emit_json(doc)
    stdout.print(
        f"estimate (not a measurement): {result.latency_ms:.4f} ms on {result.target} for {result.runtime}, "
        f"{result.threads} thread(s), by {result.method}"
    )
    stdout.print(f"stated accuracy: {result.accuracy} (calibrated on {result.calibrated_on})")
    for note in result.notes:
        stdout.print(f"note: {note}")
    if layers:
        from rich.table import Table

        table = Table(title="per-layer estimate")
        for col in ("layer", "op", "estimate ms"):
            table.add_column(col)
        for layer in result.layers:
            table.add_row(layer.name, layer.op_type, f"{layer.latency_ms:.4f}")
        stdout.print(table)
