"""``space``: load a model and a recipe, and list every knob its passes expose on that model for a target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repfx_deploy.errors import RecipeError
from repfx_deploy.ingest.loader import LoadOptions
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
    from repfx_deploy.pipeline.data import load_data, load_torch_model, pass_context

    recipe = request.recipe
    if not recipe.passes:
        raise RecipeError("The recipe has no passes, so there are no knobs to list.", "Add [[passes]] to the recipe.")
    profile = get_profile(recipe.target, request.target_file)
    loaded = load_torch_model(request.model_path, recipe, request.load, "space")
    assert loaded.module is not None  # load_torch_model refuses a model without one
    data = load_data(recipe, loaded)
    context = pass_context(loaded, profile, data)
    chain = prepare_chain(loaded.module, recipe.passes, context)
    return {
        "model": str(loaded.path),
        "target": profile.name,
        "channel_multiple": profile.channel_multiple,
        **chain.space.to_dict(),
    }
