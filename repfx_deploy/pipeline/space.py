"""``space``: load a model and a recipe, and list every knob its passes expose on that model for a target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repfx_deploy.errors import InputError, RecipeError
from repfx_deploy.ingest.loader import LoadOptions, load_model
from repfx_deploy.recipe import Recipe
from repfx_deploy.targets import get_profile


@dataclass(frozen=True)
class SpaceRequest:
    model_path: Path
    recipe: Recipe
    load: LoadOptions = LoadOptions()
    target_file: Path | None = None


def recipe_space(request: SpaceRequest) -> dict[str, Any]:
    """The recipe's search space on the model, as a JSON-ready document: the target, every pass's sites
    (name, knob, choices in kept units, default), the space's size and the default assignment.

    Preparing a pass is its expensive part (importance scores, factors, calibration statistics): this runs it
    once per pass, on the module the earlier passes make at their defaults.
    """
    from repfx_deploy.passes.chain import prepare_chain
    from repfx_deploy.passes.protocol import PassContext
    from repfx_deploy.pipeline.data import load_data

    recipe = request.recipe
    if not recipe.passes:
        raise RecipeError("The recipe has no passes, so there are no knobs to list.", "Add [[passes]] to the recipe.")
    profile = get_profile(recipe.target, request.target_file)
    loaded = load_model(
        request.model_path,
        LoadOptions(
            arch=request.load.arch or recipe.arch,
            python_path=request.load.python_path,
            trust_pickle=request.load.trust_pickle,
            input_specs=recipe.input_specs or request.load.input_specs,
        ),
    )
    if not loaded.is_torch or loaded.module is None:
        raise InputError(
            f"space needs a PyTorch model, but {str(request.model_path)!r} is {loaded.format}.",
            "Pass the trained PyTorch model the recipe compresses.",
        )
    data = load_data(recipe, loaded)
    context = PassContext(
        input_specs=loaded.input_specs,
        profile=profile,
        calibration=data.calibration,
        train=data.train,
        reference=loaded.module,
        artifact_checks=True,
    )
    chain = prepare_chain(loaded.module, recipe.passes, context)
    return {
        "model": str(loaded.path),
        "target": profile.name,
        "channel_multiple": profile.channel_multiple,
        **chain.space.to_dict(),
    }
