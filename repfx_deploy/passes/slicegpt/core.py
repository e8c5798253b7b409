"""SliceGPT (Ashkboos et al., ICLR 2024): fold the norms, rotate the residual stream onto its principal axes
layer by layer, and delete the directions of least energy.

    result = slice_model(hf_model, batches, SliceGPTConfig(slicing=0.25))

``batches`` are keyword arguments for the model (``input_ids``, optional ``attention_mask``); padded tokens
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
from repfx_deploy.passes.slicegpt.adapters import Prepared, prepare
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
    return (mask.bool() if mask is not None else torch.ones(ids.shape, dtype=torch.bool))


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
        calls.append(_Call(hidden.detach(), _attention_kwargs(tuple(args[1:]), kwargs), torch.ones(0, dtype=torch.bool)))
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
                raise PassError("The model never called its first transformer layer.", "Pass a model whose forward runs its layers.")
            calls[-1].mask = _token_mask(batch)
    finally:
        handle.remove()
    return calls


def _axes(streams: list[torch.Tensor], calls: list[_Call], kept: int, energies: list[float], unit_tokens: bool) -> torch.Tensor:
    vectors, values = principal_axes(covariance(streams, (c.mask for c in calls), unit_tokens=unit_tokens))
    energies.append(energy_kept(values, kept))
    return vectors[:, :kept]


def slice_model(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], config: SliceGPTConfig) -> SliceResult:
    """Fold, rotate and slice ``model`` in place (see the module docstring); returns what was done."""
    if not batches:
        raise PassError("SliceGPT needs calibration data and got none.", "Pass calibration batches (token ids).")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        prepared = prepare(model)
        result = _rotate_and_slice(model, prepared, batches, config)
    model.train(was_training)
    result.seconds = time.perf_counter() - start
    return result


def _rotate_and_slice(model: nn.Module, prepared: Prepared, batches: Sequence[Mapping[str, torch.Tensor]], config: SliceGPTConfig) -> SliceResult:
    hidden = prepared.hidden
    try:
        planned = config.stream_widths(hidden, len(prepared.sublayers()))
    except ValueError as e:
        raise PassError(f"SliceGPT cannot use these widths: {e}.", "Give one width per stream, none above the model's hidden size.") from e
    widths = iter(planned)
    sliced = [w for w in planned if w < hidden]
    dtype = prepared.embeddings[0].weight.dtype
    energies: list[float] = []
    unit = config.token_weighting == "unit"
    first = prepared.layers[0]
    calls = _capture(model, first, batches)
    mean_sliced = round(sum(sliced) / len(sliced)) if sliced else hidden
    result = SliceResult(prepared.family, hidden, mean_sliced, len(prepared.layers), int(sum(int(c.mask.sum()) for c in calls)), stream_widths=planned)
    q = _axes([c.hidden for c in calls], calls, next(widths), energies, unit)
    for table in prepared.embeddings:
        rotate_reader(table, q)
    calls = _capture(model, first, batches)  # the embeddings' output, now rotated and sliced
    streams = [c.hidden for c in calls]
    index = 0
    for layer in prepared.layers:
        for which, sub in zip(("attn", "mlp"), layer.sublayers()):
            rotate_sublayer_inputs(sub, q, prepared.shortcut_maps[index], prepared.shortcut_biases[index], dtype)
            kwargs = [c.kwargs if which == "attn" else {} for c in calls]
            outputs = [sub(x, **kw) for x, kw in zip(streams, kwargs)]
            q = _axes(outputs, calls, next(widths), energies, unit)
            rotate_sublayer_outputs(sub, q)
            if isinstance(sub.post, nn.Identity):  # pre-norm: the rotated output is exactly the projection
                streams = [(o.double() @ q).to(o.dtype) for o in outputs]
            else:  # post-norm: the norm now sees the sliced vector, not the full one, so run it again
                streams = [sub(x, **kw) for x, kw in zip(streams, kwargs)]
            index += 1
        log.debug("slicegpt: layer %d of %d done", index // 2, len(prepared.layers))
    for linear in prepared.head_inputs:
        rotate_reader(linear, q)
    result.head_width = q.shape[1]
    result.energy_kept = energies
    return result
