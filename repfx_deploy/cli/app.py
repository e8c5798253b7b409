"""The ``repfx-deploy`` commands. Each is a thin shell over a pipeline function; see ``--help``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from repfx_deploy.cli.device import device_app
from repfx_deploy.cli.estimate import estimate
from repfx_deploy.cli.options import (
    Arch,
    Force,
    FreshTuning,
    InputShape,
    Json,
    PythonPath,
    Rpc,
    RpcKey,
    Target,
    TargetFile,
    Threads,
    TrustPickle,
    Verbose,
    load_options,
)
from repfx_deploy.cli.output import (
    emit_json,
    handle_errors,
    run_cli,
    setup_logging,
    stderr,
    stdout,
)
from repfx_deploy.cli.search import search
from repfx_deploy.cli.space import space

app = typer.Typer(
    name="repfx-deploy",
    help="Compress a trained PyTorch model, lower it to ONNX, compile it with TVM for a device, measure it, report it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@handle_errors
def inspect(
    model: Annotated[
        Path, typer.Argument(help="Model file: state_dict (.pt/.pth with --arch), .pt2, TorchScript or .onnx.")
    ],
    arch: Arch = None,
    python_path: PythonPath = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Parameters, size, MACs per layer and in total, input and output shapes."""
    setup_logging(verbose)
    from repfx_deploy.analyze.onnx_stats import onnx_stats
    from repfx_deploy.analyze.torch_stats import torch_stats
    from repfx_deploy.ingest.loader import load_model

    loaded = load_model(model, load_options(arch, python_path, trust_pickle, input_shape))
    if loaded.module is not None:
        stats = torch_stats(loaded.module, loaded.input_specs)
    else:
        assert loaded.onnx_path is not None  # a loaded model is a torch module or an ONNX file
        stats = onnx_stats(loaded.onnx_path)
    doc = {"model": str(model), "format": loaded.format, "sha256": loaded.sha256, **stats.to_dict()}
    if json_out:
        return emit_json(doc)
    from rich.table import Table

    table = Table(title=f"{model} ({loaded.format})")
    for col in ("layer", "type", "MACs", "params"):
        table.add_column(col, justify="right" if col in ("MACs", "params") else "left")
    for layer in stats.layers:
        table.add_row(layer.name, layer.kind, f"{layer.macs:,}", f"{layer.params:,}")
    stdout.print(table)
    stdout.print(f"total: {stats.params:,} parameters, {stats.size_bytes:,} bytes, {stats.macs:,} MACs")
    stdout.print(f"inputs: {stats.inputs}\noutputs: {stats.outputs}")


@app.command()
@handle_errors
def export(
    model: Annotated[Path, typer.Argument(help="PyTorch model file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .onnx file.")],
    arch: Arch = None,
    python_path: PythonPath = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17-20).")] = 18,
    exporter: Annotated[str, typer.Option(help="auto, dynamo or torchscript.")] = "auto",
    data: Annotated[
        Path | None, typer.Option("--data", help="Real inputs (.npz with x) to verify on, besides random ones.")
    ] = None,
    force: Force = False,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Export to ONNX (checked, shape-inferred, constant-folded) and verify it against torch with ONNX Runtime."""
    setup_logging(verbose)
    from repfx_deploy.atomic import check_output
    from repfx_deploy.data.tensors import random_inputs
    from repfx_deploy.errors import InputError
    from repfx_deploy.ingest.loader import load_model
    from repfx_deploy.lower.onnx_export import ExportConfig
    from repfx_deploy.pipeline.artifacts import export_checked

    check_output(output, force=force)
    # --exporter is a plain str option; ExportConfig checks it is one of the Exporter names
    config = ExportConfig(opset=opset, exporter=exporter)  # type: ignore[arg-type]
    loaded = load_model(model, load_options(arch, python_path, trust_pickle, input_shape))
    if loaded.module is None:
        raise InputError(
            f"{str(model)!r} is already ONNX.", "export takes a PyTorch model; use compile or bench for ONNX files."
        )
    samples = [random_inputs(loaded.input_specs, seed=s) for s in range(4)]
    if data is not None:
        from repfx_deploy.data.datasets import load_dataset
        from repfx_deploy.data.preprocess import Preprocess

        ds = load_dataset(data, loaded.input_specs[0], Preprocess(), limit=64)
        samples += [[b] for b in ds.batches(loaded.input_specs[0].shape[0])[:16]]
    art = export_checked(
        loaded.module,
        loaded.input_specs,
        output,
        samples=samples,
        export_config=config,
        threads=0,
        source_sha256=loaded.sha256,
        force=force,
    )
    (agreement,) = art.verification
    doc = {
        **art.export,
        "source_sha256": loaded.sha256,
        "inputs": [s.to_dict() for s in loaded.input_specs],
        "verification": agreement,
    }
    if json_out:
        return emit_json(doc)
    e = art.export
    stdout.print(f"wrote {e['path']} ({e['size_bytes']:,} bytes, opset {e['opset']}, {e['exporter']} exporter)")
    stdout.print(
        f"verified on {agreement['samples']} inputs: max abs error {agreement['max_abs_error']:.3g}, cosine {agreement['cosine']:.8f}"
    )


@app.command("compile")
@handle_errors
def compile_cmd(
    model: Annotated[Path, typer.Argument(help="PyTorch model file or .onnx file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the compiled artifact.")],
    target: Target = None,
    target_file: TargetFile = None,
    threads: Threads = 0,
    tune_trials: Annotated[
        int, typer.Option("--tune-trials", min=0, help="MetaSchedule trials (0: use the tuning database only).")
    ] = 0,
    fresh_tuning: FreshTuning = False,
    rpc: Rpc = None,
    rpc_key: RpcKey = None,
    arch: Arch = None,
    python_path: PythonPath = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    force: Force = False,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Compile with TVM for a target into a library the TVM runtime loads alone; verified against ONNX Runtime.

    With --rpc, an artifact for another device is verified on a device of that target from the tracker, and
    --tune-trials times MetaSchedule's candidates there.
    """
    setup_logging(verbose)
    from repfx_deploy.compile.tvm_tune import fresh_tuning as fresh_databases
    from repfx_deploy.pipeline.compile import CompileRequest, compile_model

    with fresh_databases(fresh_tuning):
        doc = compile_model(
            CompileRequest(
                source=model,
                out_dir=output,
                load=load_options(arch, python_path, trust_pickle, input_shape),
                target=target or "host",
                target_file=target_file,
                threads=threads,
                tune_trials=tune_trials,
                force=force,
                rpc=rpc,
                rpc_key=rpc_key,
            )
        )
    if json_out:
        return emit_json(doc)
    v = doc["verification"]
    on = f" on device {v['device']['key']!r}" if v and "device" in v else ""
    checked = (
        f"max abs error vs ONNX Runtime{on} {v['max_abs_error']:.3g}"
        if v
        else "not verified here (built for another device; --rpc verifies on one)"
    )
    stdout.print(f"wrote {doc['artifact']['library_path']} for {doc['target']}; {checked}")


@app.command()
@handle_errors
def bench(
    model: Annotated[Path, typer.Argument(help="PyTorch model, .onnx file, or compiled TVM artifact folder.")],
    target: Target = None,
    target_file: TargetFile = None,
    threads: Threads = 0,
    runtime: Annotated[
        list[str] | None, typer.Option("--runtime", help="torch, onnxruntime, tvm or all (repeatable).")
    ] = None,
    warmup: Annotated[int, typer.Option(min=0)] = 10,
    repeats: Annotated[int, typer.Option(min=3)] = 50,
    tune_trials: Annotated[int, typer.Option("--tune-trials", min=0)] = 0,
    fresh_tuning: FreshTuning = False,
    rpc: Rpc = None,
    rpc_key: RpcKey = None,
    arch: Arch = None,
    python_path: PythonPath = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Latency on each runtime: warm-up, repeats, median, p90, min, threads, versions and CPU.

    With --rpc, on a device from a TVM RPC tracker: the TVM artifact for --target is uploaded, its outputs are
    checked against ONNX Runtime on this machine, and it is timed with the device's own timer.
    """
    setup_logging(verbose)
    from repfx_deploy.compile.tvm_tune import fresh_tuning as fresh_databases
    from repfx_deploy.measure.timing import TimingConfig
    from repfx_deploy.pipeline.bench import BenchRequest
    from repfx_deploy.pipeline.bench import bench as run_bench

    runtimes = tuple(r for r in (runtime or []) if r != "all")
    with fresh_databases(fresh_tuning):
        doc = run_bench(
            BenchRequest(
                source=model,
                runtimes=runtimes,
                load=load_options(arch, python_path, trust_pickle, input_shape),
                target=target or "host",
                target_file=target_file,
                threads=threads,
                tune_trials=tune_trials,
                timing=TimingConfig(warmup=warmup, repeats=repeats, max_repeats=max(2000, repeats)),
                rpc=rpc,
                rpc_key=rpc_key,
            )
        )
    if json_out:
        return emit_json(doc)
    from rich.table import Table
    from rich.text import Text

    where = f"device {doc['rpc']['key']!r} at {doc['device']['address']}" if "rpc" in doc else doc["target"]
    table = Table(title=f"{model} on {where}, {doc['threads']} thread(s), batch latency")
    for col in ("runtime", "median ms", "p90 ms", "min ms", "repeats"):
        table.add_column(col)
    for name, r in doc["results"].items():
        st = r["stats"]
        table.add_row(name, f"{st['median_ms']:.4f}", f"{st['p90_ms']:.4f}", f"{st['min_ms']:.4f}", str(st["repeats"]))
    stdout.print(table)
    if doc.get("emulated"):
        stdout.print(Text.assemble((doc["note"], "bold"), " (the device is emulated)"))
    for v in doc["verification"]:
        stdout.print(f"{v['candidate']} vs {v['reference']}: max abs error {v['max_abs_error']:.3g}")


@app.command()
@handle_errors
def targets(json_out: Json = False) -> None:
    """The known device profiles."""
    from repfx_deploy.targets import list_profiles

    profiles = {name: p.to_dict() for name, p in sorted(list_profiles().items())}
    if json_out:
        return emit_json({"targets": profiles})
    from rich.table import Table

    table = Table(title="device profiles")
    for col in ("name", "description", "TVM target", "runtimes"):
        table.add_column(col)
    for name, p in profiles.items():
        table.add_row(name, p["description"], str(p["tvm_target"]), ", ".join(p["runtimes"]))
    stdout.print(table)


@app.command()
@handle_errors
def compress(
    model: Annotated[Path, typer.Argument(help="PyTorch model file (state_dict with --arch, .pt2, TorchScript).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Result folder.")] = Path("repfx-out"),
    target: Target = None,
    target_file: TargetFile = None,
    threads: Threads = 0,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="Recipe TOML (passes, data, preprocessing).")] = None,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="Calibration data (.npz/.npy, image folder or zip).")
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option("--eval-data", help="Labeled evaluation data, for accuracy before and after.")
    ] = None,
    tune_trials: Annotated[int | None, typer.Option("--tune-trials", min=0)] = None,
    latency_budget: Annotated[
        str | None,
        typer.Option(
            "--latency-budget",
            help="Search the recipe's knobs (default: prune + int8) for the most accurate model within this "
            "latency (20ms) and ship it in OUTPUT/best/; see `repfx-deploy search`.",
        ),
    ] = None,
    fresh_tuning: FreshTuning = False,
    rpc: Rpc = None,
    rpc_key: Annotated[
        str | None,
        typer.Option("--rpc-key", "--key", help="The device's key at the tracker (default: the target's rpc_key)."),
    ] = None,
    arch: Arch = None,
    python_path: PythonPath = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    force: Force = False,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """The main job: ingest -> passes -> ONNX -> TVM -> measure -> report, into one folder.

    The target's latency is always reported, labelled by its source: measured on this machine when the target is
    this machine; with --rpc, measured on a device of the target from that TVM RPC tracker; otherwise the target's
    calibrated estimate, with its stated error beside it.
    """
    setup_logging(verbose)
    from repfx_deploy.compile.tvm_tune import fresh_tuning as fresh_databases
    from repfx_deploy.pipeline.compress import CompressRequest
    from repfx_deploy.pipeline.compress import compress as run_compress
    from repfx_deploy.recipe import load_recipe
    from repfx_deploy.spec import parse_input_shapes

    loaded_recipe = load_recipe(recipe).with_overrides(
        target=target,
        threads=threads or None,
        tune_trials=tune_trials,
        arch=arch,
        input_specs=parse_input_shapes(input_shape or []),
        calibration=calibration,
        eval=eval_data,
    )
    compress_request = CompressRequest(
        model_path=model,
        out_dir=output,
        recipe=loaded_recipe,
        load=load_options(arch, python_path, trust_pickle, None),
        target_file=target_file,
        force=force,
        rpc=rpc,
        rpc_key=rpc_key,
    )
    if latency_budget is not None:  # the search, then the chosen model: the search command's own output
        from repfx_deploy.cli.search import run_interruptible, show
        from repfx_deploy.pipeline.search import latency_budget_search

        with fresh_databases(fresh_tuning):
            searched = run_interruptible(
                lambda r: latency_budget_search(r, latency_budget, progress=stderr.is_terminal),
                compress_request,
                output,
                json_out,
            )
        return show(searched, output, json_out)
    with fresh_databases(fresh_tuning):
        report = run_compress(compress_request)
    if json_out:
        return emit_json(report)
    from repfx_deploy.report.markdown import render_markdown

    stdout.print(render_markdown(report))
    stderr.print(f"results in {output}/")


def main() -> None:
    run_cli(app)


app.command("space")(space)
app.command("search")(search)
app.command("estimate")(estimate)  # registered last, so it comes last in --help
app.add_typer(device_app, name="device")  # a sub-app: device tracker / serve / list
