"""What a recipe runs on: the PyTorch model (recipe keys merged with the command line) and its data sets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repfx_deploy.data.validate import check_labels_fit
from repfx_deploy.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.ingest.loader import LoadedModel, LoadOptions
    from repfx_deploy.passes.protocol import PassContext
    from repfx_deploy.recipe import Recipe
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import TargetProfile

log = logging.getLogger("repfx_deploy.pipeline")


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
    for data on a model with several inputs, ``DataError`` for evaluation labels the model has no class for
    (checked now, not after minutes of compression)."""
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
    labeled = [d for d in (evaluation, train) if d is not None and d.y is not None]
    if labeled and loaded.module is not None:
        classes = output_classes(loaded.module, loaded.input_specs)
        for dataset in labeled:
            if classes is not None and dataset.y is not None:
                check_labels_fit(dataset.y, classes, dataset.source, dataset.positions)
    return RecipeData(calibration, evaluation, train)


def pass_context(loaded: LoadedModel, profile: TargetProfile, data: RecipeData, reference: Any = None) -> PassContext:
    """The context compress, space and search give the recipe's passes: the model's signature, the profile, the
    recipe's data, the model before any pass as the teacher (``reference``, default the loaded module), and
    ``artifact_checks`` on, since each of them exports and checks the result itself."""
    from repfx_deploy.passes.protocol import PassContext

    return PassContext(
        input_specs=loaded.input_specs,
        profile=profile,
        calibration=data.calibration,
        train=data.train,
        reference=loaded.module if reference is None else reference,
        artifact_checks=True,
    )


def output_classes(module: Any, specs: tuple[InputSpec, ...]) -> int | None:
    """How many class scores the model's first output has per sample (its size past the batch axis), from one
    forward pass on zeros; ``None`` when that pass fails (the pipeline reports that failure itself, later)."""
    import torch

    from repfx_deploy.data.tensors import zeros_for
    from repfx_deploy.modules import inference_mode

    try:
        with torch.no_grad():
            out = inference_mode(module)(*zeros_for(specs))
    except Exception as e:  # any model error: the label check is a courtesy, the real run reports it
        log.debug("label check skipped: the model did not run on zeros: %s", e)
        return None
    while not isinstance(out, torch.Tensor):
        if isinstance(out, dict) and out:
            out = next(iter(out.values()))
        elif isinstance(out, (list, tuple)) and out:
            out = out[0]
        else:
            return None
    if out.ndim < 2:
        return None
    return int(out[0].numel())
