"""The recipe's data sets (calibration, eval, train), loaded for a model's input signature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from repfx_deploy.errors import InputError

if TYPE_CHECKING:
    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.ingest.loader import LoadedModel
    from repfx_deploy.recipe import Recipe


@dataclass
class RecipeData:
    calibration: Dataset | None
    eval: Dataset | None
    train: Dataset | None


def load_data(recipe: Recipe, loaded: LoadedModel) -> RecipeData:
    """Each data set the recipe names, preprocessed as it says (``None`` where it names none); ``InputError``
    for data on a model with several inputs."""
    from repfx_deploy.data.datasets import load_dataset

    spec = loaded.input_specs[0]
    wanted = [p for p in (recipe.data.calibration, recipe.data.eval, recipe.data.train) if p is not None]
    if wanted and len(loaded.input_specs) != 1:
        raise InputError(
            "Calibration/evaluation data is only supported for single-input models.",
            "Drop the [data] paths for this model.",
        )
    pre = recipe.data.preprocess
    calibration = (
        load_dataset(recipe.data.calibration, spec, pre, limit=recipe.data.calibration_samples)
        if recipe.data.calibration
        else None
    )
    evaluation = load_dataset(recipe.data.eval, spec, pre, limit=recipe.data.eval_samples) if recipe.data.eval else None
    train = load_dataset(recipe.data.train, spec, pre) if recipe.data.train else None
    return RecipeData(calibration, evaluation, train)
