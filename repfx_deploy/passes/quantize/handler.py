"""The ``quantize`` pass: recipe options -> PTQ (optionally mixed precision, then QAT) -> a QDQ-exportable module.

The returned module exports (dynamo exporter, opset 18) to a QDQ ONNX model: int8 weight initializers with
DequantizeLinear, QuantizeLinear/DequantizeLinear pairs on activations. The pass exports it once itself and asks
ONNX Runtime which kernels it builds, so the stats say whether int8 really runs (``ran_int8``); TVM 0.27 imports
the same QDQ model but computes it as dequantize -> float op (measured; see README "Quantization").
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from repfx_deploy.errors import PassError, RepfxError
from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.registry import PassContext, PassResult, register_pass

log = logging.getLogger("repfx_deploy.passes.quantize")

TVM_INT8_NOTE = "no: TVM 0.27 imports QuantizeLinear/DequantizeLinear and computes the dequantized model in float"
SENSITIVITY_BATCHES = 4


@register_pass("quantize")
def handler(module, options: Mapping[str, Any], context: PassContext) -> PassResult:
    config = QuantizeConfig.from_options(options)
    if context.calibration is None or len(context.calibration) == 0:
        raise PassError(
            f"quantize (mode = {config.mode!r}) needs calibration data to choose activation ranges, and none was given.",
            "Pass --calibration DATA, or set [data] calibration in the recipe (e.g. 256-512 samples of real inputs).",
        )
    if len(context.input_specs) != 1:
        raise PassError("quantize supports single-input models only.", "Quantize a model with one input tensor.")
    deploy, stats = quantize_module(module, context.input_specs, context.calibration, config, train=context.train)
    if not context.artifact_checks:
        stats["ran_int8"] = check_int8(deploy, context.input_specs)
    return PassResult(module=deploy, stats=stats)


def quantize_module(module, specs, calibration, config: QuantizeConfig, *, train=None):
    """The whole pass without the ONNX check: returns (frozen deployable module, stats)."""
    from repfx_deploy.passes.quantize.mixed import (
        choose,
        layer_bytes,
        measure_sensitivity,
    )
    from repfx_deploy.passes.quantize.ptq import batches, prepare, quantize_ptq
    from repfx_deploy.passes.quantize.qat import qat_finetune

    stats: dict[str, Any] = {"mode": config.mode, "config": _config_record(config)}
    work_batch = min(config.finetune_batch_size if config.mode == "qat" else config.calibration_batch_size, len(calibration))
    if config.size_budget_bytes > 0:
        probe = prepare(module, specs, config, batch=work_batch)
        inputs = batches(calibration, work_batch)[:SENSITIVITY_BATCHES]
        sens = measure_sensitivity(probe.work, inputs, weight_method=config.weight_method)
        chosen = choose(probe.work.layers, sens, config.size_budget_bytes, config.layer_overrides)
        config = dataclasses.replace(config, layer_bits=tuple(sorted(chosen.items(), key=lambda kv: kv[0])))
        stats["mixed_precision"] = {"size_budget_bytes": config.size_budget_bytes, "sensitivity": [s.to_dict() for s in sens]}
    prepared, ptq_stats = quantize_ptq(module, specs, calibration, dataclasses.replace(config, calibration_batch_size=work_batch))
    stats.update(ptq_stats)
    if config.mode == "qat":
        data = train if train is not None and len(train) > 0 else calibration
        stats["qat"] = {"data": "train" if data is train else "calibration (no [data] train given)", "samples": len(data)}
        stats["qat"].update(qat_finetune(prepared.work, module, data, config, batch=prepared.batch or work_batch))
    deploy = prepared.deployable()
    layers = deploy.layers
    stats["layers"] = [{"name": L.name, "kind": L.kind, "bits": L.bits} for L in layers]
    stats["bits_histogram"] = {str(k): v for k, v in Counter(str(L.bits) for L in layers).items()}
    stats["weights_bytes_packed_estimate"] = int(sum(layer_bytes(L, L.bits) for L in layers))
    stats["weights_bytes_float"] = int(sum(layer_bytes(L, "float") for L in layers))
    stats["int4_storage"] = "int4 weights use 16 levels of an int8 initializer (opset 18; TVM 0.27 imports <= 20, ONNX int4 needs 21)"
    stats["ran_int8_tvm"] = TVM_INT8_NOTE
    return deploy, stats


def check_int8(module, specs) -> dict:
    """Export ``module`` to a scratch ONNX file and report the kernels ONNX Runtime builds for it (for use from
    Python; ``compress`` checks its own ``model.onnx`` with ``int8_record`` instead)."""
    from repfx_deploy.lower.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="repfx-quant-") as scratch:
        try:
            exported = export_onnx(module, specs, Path(scratch) / "q.onnx")
        except RepfxError as e:
            raise PassError(f"quantize: the quantized model does not export to ONNX: {e.problem}", "Report this model.") from e
        return int8_record(exported.path, exported.exporter, checked="a scratch export (default settings)")


def int8_record(onnx_path: Path, exporter: str, *, checked: str) -> dict:
    """Which runtimes run ``onnx_path`` in int8: the kernels ONNX Runtime builds for it; TVM 0.27 never does."""
    from repfx_deploy.passes.quantize.inspect_ort import ort_kernels

    kernels = ort_kernels(onnx_path)
    return {
        "onnxruntime": kernels.runs_int8, "tvm": False, "exporter": exporter, "checked": checked,
        "onnxruntime_kernels": kernels.to_dict(),
        "summary": f"onnxruntime {'yes' if kernels.runs_int8 else 'no'}, tvm no (computes dequantized float)",
    }


def _config_record(config: QuantizeConfig) -> dict:
    d = dataclasses.asdict(config)
    d["layer_bits"] = dict(config.layer_bits)
    d["checkpoint"] = str(config.checkpoint) if config.checkpoint else None
    return d
