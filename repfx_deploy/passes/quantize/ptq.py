"""Post-training quantization, split into what is measured once and what each choice of bits costs.

Once per model and config (``capture_graphs``, ``measure``): capture with ``torch.export``, fold BatchNorm (and
equalize), then run the *float* graph over the calibration batches and record, for every value any activation
quantizer could observe (``graph.observed_nodes``), its range and histogram, turned into (scale, zero point), and
every layer's mean float output per channel (for bias correction). Activations are calibrated on the float model,
weights in float, so these statistics do not depend on any layer's bits.

Per assignment (``build``, ``calibrate``, ``correct_bias``, ``deployable``): a copy of the folded graph gets
quantizers at the assignment's bits, takes its ranges from those statistics, and bias correction runs one
quantized pass over the calibration batches (the quantized means are the only statistic that depends on bits).

A model whose batch dimension cannot be made dynamic under ``torch.export`` (the CIFAR ViT's ``len(x)`` turns it
into a constant) is captured twice with the same graph: at the calibration batch size to calibrate or train, and at
the deployment input shape to export; the quantizer state moves from one to the other by ``load_state_dict``.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from repfx_deploy.errors import PassError
from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.quantize.fakequant import ActQuant, ProbeSums
from repfx_deploy.passes.quantize.fold import fetch
from repfx_deploy.passes.quantize.graph import (
    QuantizedModel,
    capture,
    layer_nodes,
    observed_nodes,
    prepare_graph,
    quantize_graph,
)
from repfx_deploy.passes.quantize.observers import activation_qparams

if TYPE_CHECKING:
    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.spec import InputSpec

log = logging.getLogger("repfx_deploy.passes.quantize")


@dataclass(frozen=True)
class Graphs:
    """The folded float graphs quantizers go into: ``work`` takes the working batch, ``deploy`` the deployment
    shape (None when ``work``'s batch dimension is dynamic, so it serves both; ``batch`` is then 0)."""

    work: fx.GraphModule
    deploy: fx.GraphModule | None
    batch: int
    folded_batchnorms: int


def capture_graphs(model: nn.Module, specs: tuple[InputSpec, ...], *, batch: int, cle: bool) -> Graphs:
    """Capture ``model`` (a copy; it is not changed) and fold it; ``batch`` is the working batch size."""
    from repfx_deploy.data.tensors import zeros_for

    deploy_example = tuple(zeros_for(specs))
    work_example = tuple(t.expand(batch, *t.shape[1:]).contiguous() for t in deploy_example)

    def build(example: tuple[torch.Tensor, ...], dynamic: bool) -> tuple[fx.GraphModule, int]:
        try:
            gm = capture(model, example, dynamic_batch=dynamic)
        except Exception as e:
            raise PassError(
                f"quantize: torch.export cannot capture the model: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}",
                "The quantize pass works on the torch.export graph; make the model exportable (no data-dependent control flow).",
            ) from e
        return gm, prepare_graph(gm, cle=cle)

    work, folded = build(work_example, True)
    if _accepts_batch(work, deploy_example, work_example):
        return Graphs(work, None, 0, folded)
    log.info("quantize: the batch dimension is not dynamic in the captured graph; calibrating at batch %d", batch)
    return Graphs(work, build(deploy_example, False)[0], batch, folded)


def _accepts_batch(work: fx.GraphModule, deploy_example, work_example) -> bool:
    if deploy_example[0].shape[0] == work_example[0].shape[0]:
        return True
    try:
        with torch.no_grad():
            work(*deploy_example)
        return True
    except Exception:
        return False


def copy_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of a captured graph (node names kept, so quantizer keys match across copies)."""
    with warnings.catch_warnings():
        # torch 2.13's own TreeSpec pickling warns about its deprecated LeafSpec on every copy of an exported graph
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        return copy.deepcopy(gm)


def batches(data: Dataset, batch: int) -> list[torch.Tensor]:
    """Full batches of ``data`` as tensors (a fixed-batch graph takes no other size)."""
    out = [torch.from_numpy(np.ascontiguousarray(b)) for b in data.batches(batch)]
    if not out:
        raise PassError(
            f"quantize: {len(data)} calibration samples are fewer than one batch of {batch}.",
            "Give more calibration samples ([data] calibration_samples) or a smaller calibration_batch_size.",
        )
    return out


@dataclass(frozen=True)
class Calibration:
    """What PTQ measures on the float model once: (scale, zero point) per observed node, and each layer node's
    per-channel mean float output (the reference bias correction moves the quantized output back to)."""

    qparams: dict[str, tuple[float, int]]
    float_means: dict[str, torch.Tensor]
    samples: int  # calibration samples the ranges come from
    bias_samples: int  # ... and the means


def bias_batches(inputs: list[torch.Tensor], config: QuantizeConfig) -> list[torch.Tensor]:
    """The calibration batches bias correction measures on: enough whole batches for ``bias_correction_samples``."""
    if config.bias_correction_samples == 0:
        return inputs
    return inputs[: max(1, math.ceil(config.bias_correction_samples / len(inputs[0])))]


def measure(gm: fx.GraphModule, inputs: list[torch.Tensor], config: QuantizeConfig) -> Calibration:
    """Run the float graph ``gm`` (a copy with observing taps; ``gm`` is not changed) over ``inputs``: a range
    pass, then a histogram pass unless the method is minmax, exactly as quantizers in observe state would. The
    float means come from the batches ``bias_batches`` picks, the ones bias correction then compares with."""
    tapped = copy_graph(gm)
    keys = set(observed_nodes(gm, quantize_add=config.quantize_add))
    layers = set(layer_nodes(gm))
    taps: dict[str, ActQuant] = {}
    probes: dict[str, ProbeSums] = {}
    for node in list(tapped.graph.nodes):
        if node.name not in keys and node.name not in layers:
            continue
        tap = ActQuant(method=config.calibration_method, percentile=config.percentile)
        tap.state = "observe"
        if node.name in layers:
            tap.probe = probes[node.name] = ProbeSums()
        name = f"tap_{len(taps)}"
        tapped.add_submodule(name, tap)
        with tapped.graph.inserting_after(node):
            tapped.graph.call_module(name, (node,))  # a dead end: it only observes
        taps[node.name] = tap
    tapped.recompile()
    probed = len(bias_batches(inputs, config))
    with torch.no_grad():
        for i, x in enumerate(inputs):
            if i == probed:
                for tap in taps.values():
                    tap.probe = None
            tapped(x)
        for tap in taps.values():
            tap.probe = None  # the means come from the first pass only
        if config.calibration_method != "minmax":
            for tap in taps.values():
                tap.observer.start_histogram()
            for x in inputs:
                tapped(x)
    qparams = {
        key: activation_qparams(
            taps[key].observer, config.calibration_method, config.percentile, relu=False, qmax=ActQuant.qmax
        )
        for key in keys
        if key in taps and taps[key].observer.seen
    }
    means = {name: probe.mean for name, probe in probes.items() if probe.total is not None}
    return Calibration(qparams, means, sum(len(x) for x in inputs), sum(len(x) for x in inputs[:probed]))


def build(
    base: fx.GraphModule,
    bits: dict[str, int | str],
    config: QuantizeConfig,
    scales: dict[tuple[str, int], torch.Tensor] | None = None,
) -> QuantizedModel:
    """A copy of the folded graph ``base`` with quantizers at ``bits`` (layer name -> 8, 4 or "float")."""
    gm = copy_graph(base)
    layers = quantize_graph(
        gm,
        weight_bits=config.weight_bits,
        layer_bits=bits,
        method=config.calibration_method,
        percentile=config.percentile,
        weight_method=config.weight_method,
        quantize_add=config.quantize_add,
        scales=scales,
    )
    return QuantizedModel(gm, layers)


def calibrate(model: QuantizedModel, calibration: Calibration) -> None:
    """Give every activation quantizer the range measured for the value it observes, then freeze."""
    for a in sorted(model.act_quants().values(), key=lambda q: q.source is not None):  # sources before mirrors
        if a.source is not None:
            a.calibrate()
            continue
        qparams = calibration.qparams.get(a.key or "")
        if qparams is None:
            raise PassError(
                f"quantize: the activation at {a.key!r} was never computed on the calibration data.",
                "Report this model.",
            )
        a.calibrate(qparams)
    model.set_state(acts="frozen", weights="frozen")
    model.freeze()


def correct_bias(model: QuantizedModel, inputs: list[torch.Tensor], calibration: Calibration) -> int:
    """Empirical bias correction (Nagel et al. 2019): add to each quantized layer's bias the per-channel mean
    difference between its float output (measured once) and its quantized output on ``inputs`` (the same
    batches, ``bias_batches``); returns layers corrected.

    All layers are corrected from one quantized pass (not layer by layer), so a layer's shift is measured with
    its inputs already quantized, which is what the deployed model sees."""
    acts = model.act_quants()
    targets = [
        (L, L.bias, acts[L.out_quant], ProbeSums()) for L in model.layers if L.out_quant and L.bias and L.weight_quant
    ]
    for _, _, q, probe in targets:
        q.probe = probe
    model.set_state(acts="frozen", weights="frozen")
    with torch.no_grad():
        for x in inputs:
            model(x)
    for layer, bias_path, q, probe in targets:
        q.probe = None
        bias = fetch(model.net, bias_path)
        with torch.no_grad():
            bias.add_((calibration.float_means[layer.node] - probe.mean).to(bias.dtype))
    return len(targets)


def deployable(
    work: QuantizedModel,
    graphs: Graphs,
    bits: dict[str, int | str],
    config: QuantizeConfig,
    scales: dict[tuple[str, int], torch.Tensor] | None = None,
) -> QuantizedModel:
    """The frozen model at the deployment input shape, carrying ``work``'s quantizer state."""
    work.freeze()
    if graphs.deploy is None:
        return work
    deploy = build(graphs.deploy, bits, config, scales)
    deploy.load_state_dict(work.state_dict())
    deploy.freeze()
    return deploy
