"""The ``snn`` pass: recipe options -> ANN-to-SNN conversion -> optional IIR retraining -> a spiking module.

The returned ``SpikingNet`` takes the ANN's input and returns its logits (averaged over the T steps), with the
steps unrolled, so it exports to ONNX and compiles with TVM like any other module. Its stats hold the conversion
(BN folded, thresholds), each IIR stage, and spike rates, synaptic operations and the energy ESTIMATE on the
calibration data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from repfx_deploy.errors import PassError
from repfx_deploy.passes.registry import PassContext, PassResult, register_pass
from repfx_deploy.passes.snn.config import SnnConfig


@register_pass("snn")
def handler(module, options: Mapping[str, Any], context: PassContext) -> PassResult:
    config = SnnConfig.from_options(options)
    if context.calibration is None or len(context.calibration) == 0:
        raise PassError(
            "snn needs calibration data to balance each layer's threshold, and none was given.",
            "Pass --calibration DATA, or set [data] calibration in the recipe (a few hundred real inputs).",
        )
    if len(context.input_specs) != 1:
        raise PassError("snn supports single-input models only.", "Convert a model with one input tensor.")
    train = context.train if context.train is not None and len(context.train) > 0 else context.calibration
    if config.iir and not train.labeled and config.kd_alpha < 1.0:
        raise PassError(
            "snn: IIR retraining uses cross-entropy on labels, but the training data has none.",
            "Give labeled [data] train (or calibration) data, or set kd_alpha = 1.0 to train by distillation alone.",
        )
    snn, stats = convert_and_train(module, context.calibration, config, train=train)
    return PassResult(module=snn, stats=stats)


def convert_and_train(module, calibration, config: SnnConfig, *, train=None, after_stage=None):
    """Conversion, then IIR when ``config.iir``; returns ``(SpikingNet at config.timesteps, stats)``."""
    import torch

    from repfx_deploy.passes.snn.convert import convert
    from repfx_deploy.passes.snn.iir import iir_train
    from repfx_deploy.passes.snn.stats import spike_stats

    x = torch.from_numpy(calibration.x[: config.calibration_samples])
    snn, report = convert(module, x.split(config.calibration_batch_size), config)
    stats: dict[str, Any] = {"config": _config_record(config), "conversion": report.to_dict()}
    if config.iir:
        stats["iir_stages"] = iir_train(snn, module, train, config, after_stage=after_stage)
        stats["thresholds_after_iir"] = {name: round(float(n.threshold.detach()), 6) for name, n in snn.neurons()}
        # the forward clamps the leak to [0, 1]; report what it uses
        stats["leaks_after_iir"] = {name: round(float(n.leak.detach().clamp(0, 1)), 6) for name, n in snn.neurons()}
    snn.set_timesteps(config.timesteps)
    snn.eval()
    probe = torch.from_numpy(calibration.x[: config.stats_samples])
    stats["spikes"] = spike_stats(snn, probe.split(config.calibration_batch_size), energy_mac_pj=config.energy_mac_pj, energy_ac_pj=config.energy_ac_pj)
    return snn, stats


def _config_record(config: SnnConfig) -> dict:
    d = dataclasses.asdict(config)
    d["iir_stages"] = list(config.stages())
    d["checkpoint_dir"] = str(config.checkpoint_dir) if config.checkpoint_dir else None
    return d
