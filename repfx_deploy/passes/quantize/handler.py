"""The ``quantize`` pass: PTQ (optionally mixed precision, then QAT) -> a QDQ-exportable module, on the protocol.

    prepared = QUANTIZE.prepare(module, QuantizeConfig(), context)   # capture, fold, calibrate: once
    QUANTIZE.apply_assignment(prepared, {"layer1.0.conv1": 4, "fc": "float"})   # cheap; as often as wanted

The space has one site per quantizable layer (conv or linear with a stored weight), named as the report names
it, knob ``weight_bits``, choices 4, 8, "float" ("float" leaves the layer as it was, unquantized). There is no
per-layer activation-bits site: activations are uint8 everywhere (ONNX Runtime's integer kernels take nothing
else), and a layer's activations are quantized exactly when the layer is.

The returned module exports (dynamo exporter, opset 18) to a QDQ ONNX model: int8 weight initializers with
DequantizeLinear, QuantizeLinear/DequantizeLinear pairs on activations. Unless the caller checks its own artifact
(``context.artifact_checks``), the pass exports it once and asks ONNX Runtime which kernels it builds, so the
extras say whether int8 really runs (``ran_int8``); TVM 0.27 imports the same QDQ model but computes it as
dequantize -> float op (measured; see docs, quantize).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import PassError, RecipeError, RepfxError
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
)
from repfx_deploy.passes.quantize.config import LAYER_CHOICES, QuantizeConfig
from repfx_deploy.passes.registry import register_pass

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from repfx_deploy.passes.quantize.mixed import Sensitivity
    from repfx_deploy.passes.quantize.ptq import Calibration, Graphs

log = logging.getLogger("repfx_deploy.passes.quantize")

TVM_INT8_NOTE = "no: TVM 0.27 imports QuantizeLinear/DequantizeLinear and computes the dequantized model in float"
INT4_NOTE = "int4 weights use 16 levels of an int8 initializer (opset 18; TVM 0.27 imports <= 20, ONNX int4 needs 21)"
SENSITIVITY_BATCHES = 4


@dataclass
class QuantizePrepared(Prepared[QuantizeConfig]):
    """What ``prepare`` measured, independent of any layer's bits (see ``QuantizePass.prepare``)."""

    graphs: Graphs
    inputs: list[torch.Tensor]  # the calibration batches, at the working batch size
    calibration: Calibration
    scales: dict[tuple[str, int], torch.Tensor]  # (layer, bits) -> per-channel weight scales
    sensitivity: tuple[Sensitivity, ...]  # mixed precision only
    work_batch: int


def _check_context(config: QuantizeConfig, context: PassContext) -> None:
    if context.calibration is None or len(context.calibration) == 0:
        raise PassError(
            f"quantize (mode = {config.mode!r}) needs calibration data to choose activation ranges, and none was given.",
            "Pass --calibration DATA, or set [data] calibration in the recipe (e.g. 256-512 samples of real inputs).",
        )
    if len(context.input_specs) != 1:
        raise PassError("quantize supports single-input models only.", "Quantize a model with one input tensor.")


def _check_layer_names(names: list[str], config: QuantizeConfig) -> None:
    """``layer_bits`` must name layers that exist: a typo must not silently leave a layer at the default."""
    unknown = sorted(set(config.layer_overrides) - set(names))
    if unknown:
        raise RecipeError(
            f"quantize: layer_bits names layers the model does not have: {', '.join(unknown)}.",
            f"Quantizable layers are: {', '.join(sorted(set(names)))}.",
        )


@register_pass
class QuantizePass(Pass[QuantizeConfig]):
    kind = "quantize"
    config_type = QuantizeConfig

    def prepare(self, module: nn.Module, config: QuantizeConfig, context: PassContext) -> QuantizePrepared:
        """Once per model and config: capture the model with ``torch.export`` and fold BatchNorm (and equalize);
        run the float graph over the calibration batches to record every candidate activation range (as scale
        and zero point) and each layer's mean float output; compute each layer's weight scales at 8 and 4 bits;
        and, with ``size_budget_bytes``, measure per-layer sensitivity and run the chooser, whose choice is the
        space's default. None of it depends on the bits a layer gets, so every assignment reuses it."""
        from repfx_deploy.passes.quantize.graph import layer_weights
        from repfx_deploy.passes.quantize.mixed import choose, measure_sensitivity
        from repfx_deploy.passes.quantize.observers import weight_scales
        from repfx_deploy.passes.quantize.ptq import batches, build, capture_graphs, measure

        _check_context(config, context)
        assert context.calibration is not None
        before = count(module, context)
        batch_size = config.finetune_batch_size if config.mode == "qat" else config.calibration_batch_size
        work_batch = min(batch_size, len(context.calibration))
        graphs = capture_graphs(module, context.input_specs, batch=work_batch, cle=config.equalize)
        weights = layer_weights(graphs.work)
        names = list(dict.fromkeys(name for name, _, _ in weights))  # a shared weight is one site
        _check_layer_names(names, config)
        scales = {
            (name, bits): weight_scales(w.detach(), bits, config.weight_method)
            for name, _, w in weights
            for bits in (8, 4)
        }
        inputs = batches(context.calibration, work_batch)
        calibration = measure(graphs.work, inputs, config)

        defaults: dict[str, int | str] = {name: config.layer_overrides.get(name, config.weight_bits) for name in names}
        sensitivity: tuple[Sensitivity, ...] = ()
        if config.size_budget_bytes > 0:
            probe = build(graphs.work, dict.fromkeys(names, 8), config, scales)
            # a layer pinned to float has no weight to measure; the others' figures do not depend on it
            measured = measure_sensitivity(probe, inputs[:SENSITIVITY_BATCHES], weight_method=config.weight_method)
            sensitivity = tuple(s for s in measured if config.layer_overrides.get(s.name) != "float")
            defaults.update(choose(probe.layers, list(sensitivity), config.size_budget_bytes, config.layer_overrides))
        sites = tuple(Site(name, "weight_bits", LAYER_CHOICES, defaults[name], unchanged="float") for name in names)
        return QuantizePrepared(
            module,
            config,
            context,
            SearchSpace("quantize", sites),
            before,
            graphs=graphs,
            inputs=inputs,
            calibration=calibration,
            scales=scales,
            sensitivity=sensitivity,
            work_batch=work_batch,
        )

    def apply_assignment(self, prepared: Prepared[QuantizeConfig], assignment: Assignment) -> PassResult:
        """A copy of the folded graph with quantizers at the assignment's bits, ranges from the cached statistics,
        bias correction (one quantized pass over the calibration batches), QAT when ``mode = "qat"`` (training:
        expensive by nature), then the deployment-shaped frozen model. The prepared state is only read."""
        from repfx_deploy.passes.quantize.mixed import layer_bytes
        from repfx_deploy.passes.quantize.ptq import bias_batches, build, calibrate, correct_bias, deployable
        from repfx_deploy.passes.quantize.qat import qat_finetune

        started = time.perf_counter()
        assert isinstance(prepared, QuantizePrepared)
        bits = prepared.space.complete(assignment)
        config, context = prepared.config, prepared.context
        work = build(prepared.graphs.work, bits, config, prepared.scales)
        calibrate(work, prepared.calibration)
        bias_inputs = bias_batches(prepared.inputs, config)
        corrected = correct_bias(work, bias_inputs, prepared.calibration) if config.bias_correction else 0
        extras: dict[str, Any] = {"mode": config.mode}
        if config.size_budget_bytes > 0:
            extras["mixed_precision"] = {
                "size_budget_bytes": config.size_budget_bytes,
                "sensitivity": [s.to_dict() for s in prepared.sensitivity],
            }
        extras.update(
            {
                "bias_corrected_layers": corrected,
                "calibration_samples": prepared.calibration.samples,
                "bias_correction_samples": prepared.calibration.bias_samples if config.bias_correction else 0,
                "activation_quantizers": len(work.act_quants()),
                "weight_quantizers": len(work.weight_quants()),
            }
        )
        if config.mode == "qat":
            train = context.train
            data = train if train is not None and len(train) > 0 else context.calibration
            assert data is not None
            extras["qat"] = {
                "data": "train" if data is train else "calibration (no [data] train given)",
                "samples": len(data),
            }
            extras["qat"].update(
                qat_finetune(work, prepared.module, data, config, batch=prepared.graphs.batch or prepared.work_batch)
            )
        deploy = deployable(work, prepared.graphs, bits, config, prepared.scales)
        layers = deploy.layers
        extras["layers"] = [{"name": L.name, "kind": L.kind, "bits": L.bits} for L in layers]
        extras["bits_histogram"] = {str(k): v for k, v in Counter(str(L.bits) for L in layers).items()}
        extras["weights_bytes_packed_estimate"] = int(sum(layer_bytes(L, L.bits) for L in layers))
        extras["weights_bytes_float"] = int(sum(layer_bytes(L, "float") for L in layers))
        extras["int4_storage"] = INT4_NOTE
        extras["ran_int8_tvm"] = TVM_INT8_NOTE
        if not context.artifact_checks:
            extras["ran_int8"] = check_int8(deploy, context.input_specs)
        return finish(prepared, deploy, bits, started, extras)


def check_int8(module: nn.Module, specs: tuple[Any, ...]) -> dict[str, Any]:
    """Export ``module`` to a scratch ONNX file and report the kernels ONNX Runtime builds for it (for use from
    Python; ``compress`` checks its own ``model.onnx`` with ``int8_record`` instead)."""
    from repfx_deploy.lower.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="repfx-quant-") as scratch:
        try:
            exported = export_onnx(module, specs, Path(scratch) / "q.onnx")
        except RepfxError as e:
            raise PassError(
                f"quantize: the quantized model does not export to ONNX: {e.problem}", "Report this model."
            ) from e
        return int8_record(exported.path, exported.exporter, checked="a scratch export (default settings)")


def int8_record(onnx_path: Path, exporter: str, *, checked: str) -> dict[str, Any]:
    """Which runtimes run ``onnx_path`` in int8: the kernels ONNX Runtime builds for it; TVM 0.27 never does."""
    from repfx_deploy.passes.quantize.inspect_ort import ort_kernels

    kernels = ort_kernels(onnx_path)
    return {
        "onnxruntime": kernels.runs_int8,
        "tvm": False,
        "exporter": exporter,
        "checked": checked,
        "onnxruntime_kernels": kernels.to_dict(),
        "summary": f"onnxruntime {'yes' if kernels.runs_int8 else 'no'}, tvm no (computes dequantized float)",
    }
