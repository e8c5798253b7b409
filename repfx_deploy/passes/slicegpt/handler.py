"""The recipe's ``kind = "slicegpt"``: validate the options, slice, report.

    [[passes]]
    kind = "slicegpt"
    slicing = 0.25                 # fraction of the embedding dimension removed
    calibration_samples = 64       # sequences of [data] calibration (token ids, N x seq_len, in an .npz)
    batch_size = 8
    round_to = 8                   # kept width rounded down to a multiple of it
    token_weighting = "energy"     # or "unit" (see SliceGPTConfig)
    slice_head = true              # false: the last stream and the head keep full width (see SliceGPTConfig)
    keep_first_layers = 0          # layers at each end that keep full width (see SliceGPTConfig)
    keep_last_layers = 0
    schedule = "uniform"           # or "ramp": less slicing at the start, more at the end, same mean (see SliceGPTConfig)
    ramp = 0.5                     # last minus first sliced stream's slicing, for schedule = "ramp"
    # widths = [576, 560, ...]     # explicit width of every stream (2 * layers + 1): the per-stream knob

The model must be a Hugging Face model folder loaded by ingest (Llama-style decoder or BERT-style encoder); the
calibration data are token ids shaped like the model's ``input_ids`` input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.registry import PassContext, PassResult, register_pass

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.passes.slicegpt.config import SliceGPTConfig

log = logging.getLogger("repfx_deploy.passes.slicegpt")

SLICEGPT_KEYS = ("slicing", "calibration_samples", "batch_size", "round_to", "token_weighting", "slice_head", "keep_first_layers", "keep_last_layers", "schedule", "ramp", "widths")


def parse_options(options: Mapping[str, Any]) -> "SliceGPTConfig":
    """Recipe table -> ``SliceGPTConfig``; ``RecipeError`` on unknown keys, a missing ``slicing`` or bad values."""
    from repfx_deploy.passes.slicegpt.config import SliceGPTConfig

    unknown = sorted(set(options) - set(SLICEGPT_KEYS))
    if unknown:
        raise RecipeError(f"Unknown option(s) {', '.join(map(repr, unknown))} in the slicegpt pass.", f"Use only: {', '.join(SLICEGPT_KEYS)}.")
    if "slicing" not in options:
        raise RecipeError("The slicegpt pass needs slicing (the fraction of the embedding dimension removed).", "Add slicing = 0.25 to its [[passes]] table.")
    values = dict(options)
    if isinstance(values.get("widths"), list):
        values["widths"] = tuple(values["widths"])
    try:
        return SliceGPTConfig(**values)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"Bad slicegpt pass option: {e}", "Fix the value in the recipe's [[passes]] table.") from e


def calibration_batches(data: "Dataset", config: "SliceGPTConfig") -> list[dict]:
    """``{"input_ids": ...}`` batches from a data set of token ids (N x seq, or N x 1 x seq), at most
    ``calibration_samples`` sequences; ``RecipeError`` when the samples are not whole non-negative numbers."""
    import numpy as np
    import torch

    x = np.asarray(data.x)
    if x.ndim == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 2 or not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x != np.round(x)):
        raise RecipeError(
            f"The slicegpt pass calibrates on token ids, but {data.source!r} holds samples of shape {tuple(data.x.shape[1:])} "
            "that are not whole non-negative numbers.",
            "Tokenize calibration text with the model's tokenizer and save it as x (N x seq_len, int64) in an .npz.",
        )
    x = x[: config.calibration_samples].astype(np.int64)
    ids = torch.from_numpy(x)
    return [{"input_ids": ids[i : i + config.batch_size]} for i in range(0, ids.shape[0], config.batch_size)]


@register_pass("slicegpt")
def slicegpt_handler(module: "nn.Module", options: Mapping[str, Any], context: PassContext) -> PassResult:
    """Slice ``module`` (a Hugging Face model, or ingest's wrapper around one) in place on the calibration data."""
    from repfx_deploy.passes.slicegpt.adapters import find_family
    from repfx_deploy.passes.slicegpt.core import slice_model

    config = parse_options(options)
    find_family(module)  # refuses an unsupported model before any work
    if context.calibration is None:
        raise RecipeError(
            "The slicegpt pass needs calibration data: the PCA of the residual stream is computed on it.",
            "Set [data] calibration to an .npz of token ids (x: N x seq_len) from text like the model's use.",
        )
    batches = calibration_batches(context.calibration, config)
    from repfx_deploy.analyze.torch_stats import param_count

    params_before = param_count(module)
    result = slice_model(getattr(module, "hf_model", module), batches, config)
    stats = result.to_dict()  # MACs and parameters before/after: apply_passes counts them
    params_after = param_count(module)
    if params_after > params_before:
        log.warning(
            "slicegpt: the sliced model has more parameters (%d) than the original (%d): the embedding table and "
            "head were tied and are now separate, and each residual connection gained a small matrix",
            params_after, params_before,
        )
    return PassResult(module, stats)

