"""Post-training quantization: capture, fold, place quantizers, calibrate on data, freeze.

A model whose batch dimension cannot be made dynamic under ``torch.export`` (the CIFAR ViT's ``len(x)`` turns it
into a constant) is captured twice with the same graph: at the calibration batch size to calibrate or train, and at
the deployment input shape to export; the quantizer state moves from one to the other by ``load_state_dict``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from repfx_deploy.errors import PassError
from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.quantize.graph import (
    LayerInfo,
    QuantizedModel,
    capture,
    quantize_graph,
)

if TYPE_CHECKING:
    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.spec import InputSpec

log = logging.getLogger("repfx_deploy.passes.quantize")


@dataclass
class Prepared:
    """The working model (calibration / training batch) and a builder for the deployment-shaped one."""

    work: QuantizedModel
    batch: int  # the batch size ``work`` takes; 0 when its batch dimension is dynamic
    build_deploy: Callable[[], QuantizedModel]

    def deployable(self) -> QuantizedModel:
        """The frozen model at the deployment input shape, carrying ``work``'s quantizer state."""
        self.work.freeze()
        if self.batch == 0:
            return self.work
        deploy = self.build_deploy()
        deploy.load_state_dict(self.work.state_dict())
        deploy.freeze()
        return deploy


def prepare(model: nn.Module, specs: tuple["InputSpec", ...], config: QuantizeConfig, *, batch: int) -> Prepared:
    """Capture ``model`` and insert quantizers (nothing calibrated yet); ``batch`` is the working batch size."""
    from repfx_deploy.data.tensors import zeros_for

    deploy_example = tuple(zeros_for(specs))
    work_example = tuple(t.expand(batch, *t.shape[1:]).contiguous() for t in deploy_example)
    kwargs = dict(
        weight_bits=config.weight_bits, layer_bits=config.layer_overrides, method=config.calibration_method,
        percentile=config.percentile, weight_method=config.weight_method, quantize_add=config.quantize_add, cle=config.equalize,
    )

    def build(example: tuple[torch.Tensor, ...], dynamic: bool) -> QuantizedModel:
        try:
            gm = capture(model, example, dynamic_batch=dynamic)
        except Exception as e:
            raise PassError(
                f"quantize: torch.export cannot capture the model: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}",
                "The quantize pass works on the torch.export graph; make the model exportable (no data-dependent control flow).",
            ) from e
        layers = quantize_graph(gm, **kwargs)
        return QuantizedModel(gm, layers)

    work = build(work_example, dynamic=True)
    if _accepts_batch(work, deploy_example, work_example):
        return Prepared(work=work, batch=0, build_deploy=lambda: work)
    log.info("quantize: the batch dimension is not dynamic in the captured graph; calibrating at batch %d", batch)
    return Prepared(work=work, batch=batch, build_deploy=lambda: build(deploy_example, dynamic=False))


def _accepts_batch(work: QuantizedModel, deploy_example, work_example) -> bool:
    if deploy_example[0].shape[0] == work_example[0].shape[0]:
        return True
    try:
        with torch.no_grad():
            work(*deploy_example)
        return True
    except Exception:
        return False


def check_layer_names(layers: tuple[LayerInfo, ...], config: QuantizeConfig) -> None:
    """``layer_bits`` must name layers that exist: a typo must not silently leave a layer at the default."""
    names = {layer.name for layer in layers}
    unknown = sorted(set(config.layer_overrides) - names)
    if unknown:
        from repfx_deploy.errors import RecipeError

        raise RecipeError(
            f"quantize: layer_bits names layers the model does not have: {', '.join(unknown)}.",
            f"Quantizable layers are: {', '.join(sorted(names))}.",
        )


def batches(data: "Dataset", batch: int) -> list[torch.Tensor]:
    """Full batches of ``data`` as tensors (a fixed-batch graph takes no other size)."""
    out = [torch.from_numpy(np.ascontiguousarray(b)) for b in data.batches(batch)]
    if not out:
        raise PassError(
            f"quantize: {len(data)} calibration samples are fewer than one batch of {batch}.",
            "Give more calibration samples ([data] calibration_samples) or a smaller calibration_batch_size.",
        )
    return out


def calibrate(model: QuantizedModel, inputs: list[torch.Tensor]) -> None:
    """Observe activations of the float model (weights in float) in two passes, then set every quantizer's range."""
    acts = model.act_quants().values()
    model.set_state(acts="observe", weights="float")
    with torch.no_grad():
        for x in inputs:
            model(x)
        if any(a.method != "minmax" for a in acts):
            for a in acts:
                a.observer.start_histogram()
            for x in inputs:
                model(x)
    for a in sorted(acts, key=lambda q: q.source is not None):
        if a.source is None and not a.observer.seen:
            raise PassError("quantize: a quantized activation was never computed on the calibration data.", "Report this model.")
        a.calibrate()
    model.set_state(acts="frozen", weights="frozen")
    model.freeze()


def correct_bias(model: QuantizedModel, inputs: list[torch.Tensor]) -> int:
    """Empirical bias correction (Nagel et al. 2019): add to each quantized layer's bias the per-channel mean
    difference between its float output and its quantized output on ``inputs``; returns layers corrected.

    All layers are corrected from one float and one quantized pass (not layer by layer), so a layer's shift is
    measured with its inputs already quantized, which is what the deployed model sees."""
    from repfx_deploy.passes.quantize.fakequant import ProbeSums

    acts = model.act_quants()
    targets = [(L, acts[L.out_quant]) for L in model.layers if L.out_quant and L.bias and L.weight_quant]
    means = {}
    for phase, (a_state, w_state) in (("float", ("float", "float")), ("quant", ("frozen", "frozen"))):
        for _, q in targets:
            q.probe = ProbeSums()
        model.set_state(acts=a_state, weights=w_state)
        with torch.no_grad():
            for x in inputs:
                model(x)
        means[phase] = {L.name: q.probe.mean for L, q in targets}
        for _, q in targets:
            q.probe = None
    model.set_state(acts="frozen", weights="frozen")
    from repfx_deploy.passes.quantize.fold import fetch

    for layer, _ in targets:
        bias = fetch(model.net, layer.bias)
        with torch.no_grad():
            bias.add_((means["float"][layer.name] - means["quant"][layer.name]).to(bias.dtype))
    return len(targets)


def quantize_ptq(model: nn.Module, specs: tuple["InputSpec", ...], calibration: "Dataset", config: QuantizeConfig) -> tuple[Prepared, dict]:
    """PTQ of ``model``; returns the prepared (calibrated, frozen) models and stats."""
    batch = min(config.calibration_batch_size, len(calibration))
    prepared = prepare(model, specs, config, batch=batch)
    check_layer_names(prepared.work.layers, config)
    inputs = batches(calibration, batch)
    calibrate(prepared.work, inputs)
    corrected = correct_bias(prepared.work, inputs) if config.bias_correction else 0
    stats = {
        "bias_corrected_layers": corrected,
        "calibration_samples": sum(len(x) for x in inputs),
        "activation_quantizers": len(prepared.work.act_quants()),
        "weight_quantizers": len(prepared.work.weight_quants()),
    }
    return prepared, stats
