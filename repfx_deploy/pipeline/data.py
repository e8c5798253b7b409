"""What a recipe runs on: the PyTorch model (recipe keys merged with the command line) and its data sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from repfx_deploy.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.ingest.loader import LoadedModel, LoadOptions
    from repfx_deploy.recipe import Recipe


def load_torch_model(model_path: Path, recipe: Recipe, load: LoadOptions, command: str) -> LoadedModel:
    """The model at ``model_path``, with the recipe's ``arch`` and ``input_shape`` where the command line gives
    none; ``InputError`` (naming ``command``) when it is not a PyTorch model."""
    from repfx_deploy.ingest.loader import LoadOptions, load_model

    loaded = load_model(
        model_path,
        LoadOptions(
            arch=load.arch or recipe.arch,
            python_path=load.python_path,
            trust_pickle=load.trust_pickle,
            input_specs=recipe.input_specs or load.input_specs,
        ),
    )
    if not loaded.is_torch or loaded.module is None:
        raise InputError(
            f"{command} needs a PyTorch model, but {str(model_path)!r} is {loaded.format}.",
            "Pass the trained PyTorch model (a state_dict with --arch, a .pt2 or TorchScript); use `compile`/`bench` for ONNX files.",
        )
    return loaded


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
