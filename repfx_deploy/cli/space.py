"""``repfx-deploy space``: the knobs a recipe's passes expose on a model, for a target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from repfx_deploy.cli.options import (
    Arch,
    InputShape,
    Json,
    PythonPath,
    Target,
    TargetFile,
    TrustPickle,
    Verbose,
    load_options,
)
from repfx_deploy.cli.output import emit_json, handle_errors, setup_logging, stdout

# Choices beyond this many are shown as the first and last few.
SHOWN_CHOICES = 8


@handle_errors
def space(
    model: Annotated[Path, typer.Argument(help="The PyTorch model the recipe compresses.")],
    recipe: Annotated[Path, typer.Option("--recipe", help="Recipe TOML whose passes define the space.")],
    target: Target = None,
    target_file: TargetFile = None,
    arch: Arch = None,
    python_path: PythonPath = None,
    trust_pickle: TrustPickle = False,
    input_shape: InputShape = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Every site of every pass (its knob, choices in kept units, default), the space's size, the defaults."""
    setup_logging(verbose)
    from repfx_deploy.pipeline.space import SpaceRequest, recipe_space
    from repfx_deploy.recipe import load_recipe

    loaded_recipe = load_recipe(recipe).with_overrides(target=target)
    doc = recipe_space(
        SpaceRequest(
            model_path=model,
            recipe=loaded_recipe,
            target_file=target_file,
            load=load_options(arch, python_path, trust_pickle, input_shape),
        )
    )
    if json_out:
        return emit_json(doc)
    _print(doc)


def _choices(choices: list[Any]) -> str:
    text = [str(c) for c in choices]
    if len(text) > SHOWN_CHOICES:
        half = SHOWN_CHOICES // 2
        text = text[:half] + ["..."] + text[-half:]
    return " ".join(text)


def _size(size: int) -> str:
    return f"{size:,}" if size < 10**9 else f"about 10^{len(str(size)) - 1}"


def _print(doc: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{doc['model']} on {doc['target']} (channel_multiple {doc['channel_multiple']})")
    for col in ("site", "knob", "choices", "default"):
        table.add_column(col, overflow="fold")
    for p in doc["passes"]:
        for s in p["sites"]:
            table.add_row(f"{p['prefix']}/{s['name']}", s["knob"], _choices(s["choices"]), str(s["default"]))
    stdout.print(table)
    for p in doc["passes"]:
        stdout.print(f"{p['prefix']}: {len(p['sites'])} site(s), {_size(p['size'])} assignments")
    stdout.print(
        f"space size: {_size(doc['size'])} assignments; the default assignment reproduces the recipe "
        '(`--json` lists it under "default").'
    )
