"""``repfx-deploy search``: the most accurate model under a latency (or size) budget on the target."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from repfx_deploy.cli.options import (
    Arch,
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
from repfx_deploy.cli.output import SIGNAL_EXIT, Terminated, emit_json, handle_errors, setup_logging, stderr, stdout
from repfx_deploy.errors import InputError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?", re.IGNORECASE)
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``1h``, ``30m``, ``90s``, ``1h30m``, or a plain number of seconds; ``InputError``
    otherwise (and for zero)."""
    raw = text.strip().lower().replace(" ", "")
    parts = list(_DURATION.finditer(raw))
    if (
        not raw
        or "".join(p.group(0) for p in parts) != raw
        or (len(parts) > 1 and any(p.group(2) is None for p in parts))
    ):
        raise InputError(f"{text!r} is not a duration.", "Write e.g. 1h, 30m, 90s or 1h30m.")
    seconds = sum(float(p.group(1)) * _SECONDS[p.group(2)] for p in parts)
    if seconds <= 0:
        raise InputError(f"The duration {text!r} is zero.", "Give a positive time budget, e.g. 30m.")
    return seconds


@handle_errors
def search(
    model: Annotated[Path, typer.Argument(help="The trained PyTorch model the recipe compresses.")],
    recipe: Annotated[
        Path, typer.Option("--recipe", help="Recipe TOML: the knobs of its passes are the space searched.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Search folder (a rerun on it resumes).")] = Path(
        "repfx-search"
    ),
    target: Target = None,
    target_file: TargetFile = None,
    budget: Annotated[
        list[str] | None,
        typer.Option("--budget", help="latency_ms=4, 20ms, size_bytes=2e6 or 2MB (repeatable, one per metric)."),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials the study holds at the end.")] = 40,
    time_budget: Annotated[
        str | None, typer.Option("--time-budget", help="Stop the trials after this long: 1h, 30m, 90s.")
    ] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe, nsga2, nsga3 or gp.")] = "tpe",
    strategy: Annotated[
        str, typer.Option("--strategy", help="optuna, or greedy (NetAdapt-style, a reference).")
    ] = "optuna",
    storage: Annotated[
        str | None, typer.Option("--storage", help="Study database URL (default: study.db in the folder).")
    ] = None,
    study_name: Annotated[str, typer.Option("--study-name", help="The study's name in the storage.")] = "repfx-search",
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes running trials on one storage.")] = 1,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Front members fine-tuned at the end.")] = 3,
    runtime: Annotated[
        str | None, typer.Option("--runtime", help="tvm or onnxruntime (default: tvm when the target has it).")
    ] = None,
    finetune_steps: Annotated[
        int, typer.Option("--finetune-steps", min=0, help="Distillation steps of each top candidate's fine-tune.")
    ] = 300,
    calibration: Annotated[Path | None, typer.Option("--calibration", help="Calibration data.")] = None,
    eval_data: Annotated[
        Path | None, typer.Option("--eval-data", help="Labelled test data (final report only).")
    ] = None,
    train_data: Annotated[
        Path | None, typer.Option("--train-data", help="Labelled training data (proxy splits, fine-tune).")
    ] = None,
    threads: Threads = 0,
    rpc: Rpc = None,
    rpc_key: RpcKey = None,
    fresh_tuning: FreshTuning = False,
    arch: Arch = None,
    python_path: PythonPath = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Search the recipe's knobs for the most accurate model within the budgets, latency measured on the target.

    Candidates are scored by an accuracy proxy (BatchNorm re-calibrated, held-out training data) and a latency
    predictor; the front is measured whole, the top K fine-tuned, and the most accurate within budget is built
    into DIR/best/ like compress builds it. DIR/recipe.toml replays it with `compress --recipe`.
    """
    setup_logging(verbose)
    from repfx_deploy.compile.tvm_tune import fresh_tuning as fresh_databases
    from repfx_deploy.pipeline.search import SearchRequest, run_search
    from repfx_deploy.recipe import load_recipe
    from repfx_deploy.search.config import SearchConfig, parse_budget

    config = SearchConfig(
        budgets=tuple(parse_budget(b) for b in budget or []),
        sampler=sampler,  # type: ignore[arg-type]  # SearchConfig checks the names
        strategy=strategy,  # type: ignore[arg-type]
        trials=trials,
        time_budget_s=parse_duration(time_budget) if time_budget else None,
        seed=seed,
        storage=storage,
        study_name=study_name,
        workers=workers,
        top_k=top_k,
        runtime=runtime,  # type: ignore[arg-type]
        finetune_steps=finetune_steps,
    )
    loaded_recipe = load_recipe(recipe).with_overrides(
        target=target, threads=threads or None, calibration=calibration, eval=eval_data, train=train_data
    )
    request = SearchRequest(
        model_path=model,
        out_dir=output,
        recipe=loaded_recipe,
        config=config,
        load=load_options(arch, python_path, trust_pickle, input_shape),
        target_file=target_file,
        rpc=rpc,
        rpc_key=rpc_key,
        progress=stderr.is_terminal,
    )
    with fresh_databases(fresh_tuning):
        report = run_interruptible(run_search, request, output, json_out)
    show(report, output, json_out)


def run_interruptible(run: Any, request: Any, output: Path, json_out: bool) -> dict[str, Any]:
    """``run(request)``; a signal stops it with one line saying the study is kept (exit 130 or 143)."""
    try:
        return run(request)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        problem = (
            f"Stopped by {signal.Signals(signum).name}; the study and the report of what was found are kept in "
            f"{str(output)!r}."
        )
        stderr.print(problem + " Run the same command again to resume.")
        if json_out:
            emit_json({"error": {"type": "Interrupted", "problem": problem, "fix": "Run the same command again."}})
        raise typer.Exit(SIGNAL_EXIT.get(signal.Signals(signum), 128 + signum)) from None


def show(report: dict[str, Any], output: Path, json_out: bool) -> None:
    """The report: one JSON document with ``--json``, else the Markdown report and where the files are."""
    if json_out:
        return emit_json(report)
    from repfx_deploy.search.report import render_search_markdown

    stdout.print(render_search_markdown(report))
    chosen = report.get("chosen")
    where = f"; the chosen model is in {output}/best/" if chosen else ""
    stderr.print(f"results in {output}/{where}")
