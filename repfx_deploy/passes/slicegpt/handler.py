"""The recipe's ``kind = "slicegpt"``: the pass, its space of stream widths, and its calibration data.

    [[passes]]
    kind = "slicegpt"
    slicing = 0.25                 # fraction of the embedding dimension removed (required unless widths is given)
    calibration_samples = 64       # sequences of [data] calibration (token ids, N x seq_len, in an .npz)
    batch_size = 8
    # round_to = 8                 # kept widths are multiples of it; default: the target's channel_multiple
    token_weighting = "energy"     # or "unit" (see SliceGPTConfig)
    slice_head = true              # false: the last stream and the head keep full width (see SliceGPTConfig)
    keep_first_layers = 0          # layers at each end that keep full width (see SliceGPTConfig)
    keep_last_layers = 0
    schedule = "uniform"           # or "ramp": less slicing at the start, more at the end, same mean (see SliceGPTConfig)
    ramp = 0.5                     # last minus first sliced stream's slicing, for schedule = "ramp"
    # widths = [576, 560, ...]     # explicit width of every stream (embed, layers.0.attn, layers.0.mlp, ...)

The model must be a Hugging Face model folder loaded by ingest (Llama-style decoder or BERT-style encoder), or
the Hugging Face model itself; the calibration data are token ids shaped like the model's ``input_ids`` input.

The space has one site per residual stream, named as ``config.stream_names`` gives (``"embed"``,
``"layers.0.attn"``, ``"layers.0.mlp"``, ...), knob ``width_kept``: about a dozen widths from a quarter of the
hidden size to all of it, multiples of the width multiple, plus the width the config itself gives the stream.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.protocol import (
    Assignment,
    Pass,
    PassContext,
    PassResult,
    Prepared,
    SearchSpace,
    Site,
    count,
    finish,
    kept_choices,
)
from repfx_deploy.passes.registry import register_pass
from repfx_deploy.passes.slicegpt.config import SliceGPTConfig, stream_names

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.passes.slicegpt.adapters import Folded
    from repfx_deploy.passes.slicegpt.core import Calibration

log = logging.getLogger("repfx_deploy.passes.slicegpt")

# About this many width choices per stream (plus the config's own width when it is not one of them): enough to
# search, few enough that a space of 2 * layers + 1 streams stays searchable.
CHOICE_STEPS = 12


def calibration_batches(data: Dataset, config: SliceGPTConfig) -> list[dict]:
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


def width_choices(hidden: int, multiple: int, default: int) -> tuple[int, ...]:
    """A stream's choices: multiples of ``multiple`` from a quarter of ``hidden`` up to ``hidden`` (kept whole),
    thinned to about ``CHOICE_STEPS``, plus ``default`` (the config's own width, so the default assignment is
    the recipe exactly, even when it is below the floor or off the multiple)."""
    base = kept_choices(hidden, multiple, minimum=max(multiple, hidden // 4), steps=CHOICE_STEPS)
    return tuple(sorted(set(base) | {default}))


@dataclass
class SlicePrepared(Prepared[SliceGPTConfig]):
    """``folded_module``: a copy of the input with every norm folded (``adapters.fold``), ``folded`` its handle;
    ``calibration``: the batches and the first stream's PCA (``core.Calibration``); ``names``: the streams."""

    folded_module: nn.Module
    folded: Folded
    calibration: Calibration
    names: tuple[str, ...]


@register_pass
class SliceGPTPass(Pass[SliceGPTConfig]):
    kind = "slicegpt"
    config_type = SliceGPTConfig

    def prepare(self, module: nn.Module, config: SliceGPTConfig, context: PassContext) -> SlicePrepared:
        """Once per model and config, on a copy of ``module``: fold every norm into the linears around it, read
        the calibration batches, run them to the first layer and take the PCA of that stream (the embedding's
        output). Every later stream's PCA runs on what the already sliced layers before it write, so it depends
        on the widths before it, and caching it would change the result: ``apply_assignment`` keeps the exact
        algorithm and computes those. Measured on the tests' tiny Llama (2 layers, hidden 64, 12 x 16 calibration
        tokens, 1 thread, busy 2-core host, best of 7): prepare 0.12 s, apply_assignment 0.19 s, each including
        0.09 s of MAC counting. The layer-by-layer part grows with depth and calibration tokens, so on a deep
        model nearly all of the time stays in apply_assignment."""
        from repfx_deploy.passes.slicegpt.adapters import find_family
        from repfx_deploy.passes.slicegpt.core import calibrate, planned_widths

        find_family(module)  # refuses an unsupported model before any work
        if context.calibration is None:
            raise RecipeError(
                "The slicegpt pass needs calibration data: the PCA of the residual stream is computed on it.",
                "Set [data] calibration to an .npz of token ids (x: N x seq_len) from text like the model's use.",
            )
        batches = calibration_batches(context.calibration, config)
        before = count(module, context)
        work = copy.deepcopy(module)
        folded, calibration = calibrate(
            getattr(work, "hf_model", work), batches, unit_tokens=config.token_weighting == "unit"
        )
        multiple = config.multiple(context.channel_multiple)
        defaults = planned_widths(config, folded, multiple)
        names = tuple(stream_names(len(folded.layers)))
        sites = tuple(
            Site(name, "width_kept", width_choices(folded.hidden, multiple, width), width, unchanged=folded.hidden)
            for name, width in zip(names, defaults)
        )
        return SlicePrepared(
            module, config, context, SearchSpace(self.kind, sites), before, work, folded, calibration, names
        )

    def apply_assignment(self, prepared: Prepared[SliceGPTConfig], assignment: Assignment) -> PassResult:
        """Rotate and slice a copy of the folded model to the assigned width of each stream, layer by layer."""
        from repfx_deploy.analyze.torch_stats import param_count
        from repfx_deploy.passes.slicegpt.core import rotate_and_slice

        assert isinstance(prepared, SlicePrepared)
        started = time.perf_counter()
        decisions = prepared.space.complete(assignment)
        widths = [int(decisions[name]) for name in prepared.names]
        # one deepcopy, so the handle's module references point into the new copy
        module, folded = copy.deepcopy((prepared.folded_module, prepared.folded))
        unit = prepared.config.token_weighting == "unit"
        result = rotate_and_slice(
            getattr(module, "hf_model", module), folded, prepared.calibration, widths, unit_tokens=unit
        )
        module.train(prepared.module.training)
        params_before, params_after = param_count(prepared.module), param_count(module)
        if params_after > params_before:
            log.warning(
                "slicegpt: the sliced model has more parameters (%d) than the original (%d): the embedding table and "
                "head were tied and are now separate, and each residual connection gained a small matrix",
                params_after,
                params_before,
            )
        extras: dict[str, Any] = {k: v for k, v in result.to_dict().items() if k != "seconds"}
        extras["energy_kept"] = {name: round(e, 5) for name, e in zip(prepared.names, result.energy_kept)}
        return finish(prepared, module, decisions, started, extras)
