"""SliceGPT (Ashkboos et al., ICLR 2024): fold the norms, rotate the residual stream onto its principal axes
layer by layer, and delete the directions of least energy.

    result = slice_model(hf_model, batches, SliceGPTConfig(slicing=0.25))

or in two steps, the first once and the second for as many width choices as wanted (on copies):
``folded, calibration = calibrate(model, batches, ...)``, then ``rotate_and_slice(model, folded, calibration,
widths, ...)``. ``batches`` are keyword arguments for the model (``input_ids``, optional ``attention_mask``); padded tokens
(mask 0) are left out of the PCA. The model is changed in place and stays a Hugging Face model: same call, same
outputs' meaning, a smaller embedding dimension.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from repfx_deploy.errors import PassError
from repfx_deploy.passes.slicegpt.adapters import Folded, fold
from repfx_deploy.passes.slicegpt.config import SliceGPTConfig
from repfx_deploy.passes.slicegpt.layers import SlicedLayer
from repfx_deploy.passes.slicegpt.pca import covariance, energy_kept, principal_axes
from repfx_deploy.passes.slicegpt.rotate import (
    rotate_reader,
    rotate_sublayer_inputs,
    rotate_sublayer_outputs,
)

log = logging.getLogger("repfx_deploy.passes.slicegpt")


@dataclass
class SliceResult:
    """What slicing did: widths, the energy each stream kept, the calibration it used, and how long it took.
    ``hidden_after`` is the mean width of the sliced streams (``hidden_before`` when none is sliced);
    ``stream_widths`` lists every stream's."""

    family: str
    hidden_before: int
    hidden_after: int
    layers: int
    calibration_tokens: int
    head_width: int = 0  # the last stream's width: what the head reads (``hidden`` unless the head is sliced)
    energy_kept: list[float] = field(default_factory=list)
    stream_widths: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "hidden_before": self.hidden_before,
            "hidden_after": self.hidden_after,
            "layers": self.layers,
            "head_width": self.head_width,
            "stream_width_min": min(self.stream_widths, default=self.hidden_after),
            "stream_width_max": max(self.stream_widths, default=self.hidden_after),
            "calibration_tokens": self.calibration_tokens,
            "energy_kept_min": round(min(self.energy_kept), 5) if self.energy_kept else None,
            "energy_kept_mean": round(sum(self.energy_kept) / len(self.energy_kept), 5) if self.energy_kept else None,
            "seconds": round(self.seconds, 2),
        }


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the first layer's inputs are recorded."""


@dataclass
class _Call:
    hidden: torch.Tensor
    kwargs: dict[str, Any]
    mask: torch.Tensor


def _token_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    return mask.bool() if mask is not None else torch.ones(ids.shape, dtype=torch.bool)


def _attention_kwargs(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The keyword arguments ``SlicedLayer.forward`` passes on to its attention sublayer, from a layer call."""
    kwargs = dict(kwargs)
    mask = args[0] if args else kwargs.pop("attention_mask", None)
    return {"attention_mask": mask, **kwargs}


def _capture(model: nn.Module, first: SlicedLayer, batches: Sequence[Mapping[str, torch.Tensor]]) -> list[_Call]:
    """Run each batch up to ``first`` and record what it receives (the stream, and the mask, rotary tables and
    cache arguments the model computes for its layers)."""
    calls: list[_Call] = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        calls.append(
            _Call(hidden.detach(), _attention_kwargs(tuple(args[1:]), kwargs), torch.ones(0, dtype=torch.bool))
        )
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                # No key/value cache: calibration runs whole sequences once.
                model(**{"use_cache": False, **batch})
            except _Captured:
                pass
            else:
                raise PassError(
                    "The model never called its first transformer layer.", "Pass a model whose forward runs its layers."
                )
            calls[-1].mask = _token_mask(batch)
    finally:
        handle.remove()
    return calls


def _axes(
    streams: list[torch.Tensor], calls: list[_Call], kept: int, energies: list[float], unit_tokens: bool
) -> torch.Tensor:
    vectors, values = principal_axes(covariance(streams, (c.mask for c in calls), unit_tokens=unit_tokens))
    energies.append(energy_kept(values, kept))
    return vectors[:, :kept]


@dataclass
class Calibration:
    """What slicing needs that no width changes: the calibration batches, the token count, and the principal
    axes (columns, by decreasing eigenvalue) and eigenvalues of the first stream, the folded model's embedding
    output. Every later stream's PCA runs on the output of the already sliced layers before it, so it depends on
    the widths chosen before it and is computed in ``rotate_and_slice``."""

    batches: list[Mapping[str, torch.Tensor]]
    tokens: int
    embed_axes: torch.Tensor
    embed_values: torch.Tensor


def calibrate(
    model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], *, unit_tokens: bool
) -> tuple[Folded, Calibration]:
    """Fold ``model``'s norms in place (its outputs do not change) and compute what ``Calibration`` holds."""
    if not batches:
        raise PassError("SliceGPT needs calibration data and got none.", "Pass calibration batches (token ids).")
    model.eval()
    with torch.no_grad():
        folded = fold(model)
        calls = _capture(model, folded.layers[0], batches)
        vectors, values = principal_axes(
            covariance([c.hidden for c in calls], (c.mask for c in calls), unit_tokens=unit_tokens)
        )
    tokens = int(sum(int(c.mask.sum()) for c in calls))
    return folded, Calibration(list(batches), tokens, vectors, values)


def planned_widths(config: SliceGPTConfig, folded: Folded, multiple: int) -> list[int]:
    """Every stream's width as ``config`` says for this model; ``PassError`` when explicit widths do not fit."""
    try:
        return config.stream_widths(folded.hidden, len(folded.sublayers()), multiple)
    except ValueError as e:
        raise PassError(
            f"SliceGPT cannot use these widths: {e}.", "Give one width per stream, none above the model's hidden size."
        ) from e


def slice_model(
    model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], config: SliceGPTConfig, *, multiple: int = 8
) -> SliceResult:
    """Fold, rotate and slice ``model`` in place (see the module docstring); returns what was done. ``multiple``
    is what widths are rounded to when ``config.round_to`` is unset (8: the SliceGPT reference code's)."""
    start = time.perf_counter()
    was_training = model.training
    folded, calibration = calibrate(model, batches, unit_tokens=config.token_weighting == "unit")
    widths = planned_widths(config, folded, config.multiple(multiple))
    result = rotate_and_slice(model, folded, calibration, widths, unit_tokens=config.token_weighting == "unit")
    model.train(was_training)
    result.seconds = time.perf_counter() - start
    return result


def rotate_and_slice(
    model: nn.Module, folded: Folded, calibration: Calibration, widths: Sequence[int], *, unit_tokens: bool
) -> SliceResult:
    """Rotate and slice the folded ``model`` in place to ``widths`` (one per stream, in stream order), layer by
    layer: each stream's rotation is the PCA of what the already sliced layers before it write."""
    hidden = folded.hidden
    if len(widths) != len(folded.sublayers()) + 1 or not all(1 <= w <= hidden for w in widths):
        raise PassError(
            f"SliceGPT got widths {list(widths)} for {len(folded.sublayers()) + 1} streams of width {hidden}.",
            "Give one width per stream, each from 1 to the model's hidden size.",
        )
    with torch.no_grad():
        return _rotate_and_slice(model, folded, calibration, list(widths), unit_tokens)


def _rotate_and_slice(
    model: nn.Module, folded: Folded, calibration: Calibration, planned: list[int], unit: bool
) -> SliceResult:
    hidden = folded.hidden
    widths = iter(planned)
    sliced = [w for w in planned if w < hidden]
    dtype = folded.embeddings[0].weight.dtype
    mean_sliced = round(sum(sliced) / len(sliced)) if sliced else hidden
    result = SliceResult(
        folded.family, hidden, mean_sliced, len(folded.layers), calibration.tokens, stream_widths=list(planned)
    )
    kept = next(widths)
    energies = [energy_kept(calibration.embed_values, kept)]
    q = calibration.embed_axes[:, :kept]
    for table in folded.embeddings:
        rotate_reader(table, q)
    first = folded.layers[0]
    calls = _capture(model, first, calibration.batches)  # the embeddings' output, now rotated and sliced
    streams = [c.hidden for c in calls]
    index = 0
    for layer in folded.layers:
        for which, sub in zip(("attn", "mlp"), layer.sublayers()):
            rotate_sublayer_inputs(sub, q, folded.shortcut_maps[index], folded.shortcut_biases[index], dtype)
            kwargs = [c.kwargs if which == "attn" else {} for c in calls]
            outputs = [sub(x, **kw) for x, kw in zip(streams, kwargs)]
            q = _axes(outputs, calls, next(widths), energies, unit)
            rotate_sublayer_outputs(sub, q)
            if isinstance(sub.post, nn.Identity):  # pre-norm: the rotated output is exactly the projection
                streams = [(o.double() @ q).to(o.dtype) for o in outputs]
            else:  # post-norm: the norm now sees the sliced vector, not the full one, so run it again
                streams = [sub(x, **kw) for x, kw in zip(streams, kwargs)]
            index += 1
        log.debug("slicegpt: layer %d of %d done", index // 2, len(folded.layers))
    for linear in folded.head_inputs:
        rotate_reader(linear, q)
    result.head_width = q.shape[1]
    result.energy_kept = energies
    return result
