"""The ``snn`` pass: ANN-to-SNN conversion -> optional IIR retraining -> a spiking module.

The returned ``SpikingNet`` takes the ANN's input and returns its logits (averaged over the T steps), with the
steps unrolled, so it exports to ONNX and compiles with TVM like any other module. Its extras hold the conversion
(BN folded, thresholds), each IIR stage, and spike rates, synaptic operations and the energy ESTIMATE on the
calibration data.

Its one site is ``timesteps`` (the whole network runs at one T). Without IIR, conversion does not depend on T,
so ``prepare`` converts once and each assignment only sets T. With IIR, ``prepare`` runs the whole schedule once
and keeps the network after each stage, so the choices are the stages' T and an assignment takes that stage's
network: exactly what a schedule stopping there trains, since each stage's training is seeded on its own.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import PassError
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
from repfx_deploy.passes.registry import register_pass
from repfx_deploy.passes.snn.config import MAX_TIMESTEPS, TIMESTEPS_SITE, SnnConfig

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.passes.snn.simulate import SpikingNet

# T offered without IIR (conversion only): powers of two, where latency and accuracy both move visibly.
PLAIN_TIMESTEPS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class SnnPrepared(Prepared[SnnConfig]):
    """The converted network (without IIR) or the network after each IIR stage, keyed by T."""

    networks: dict[int, SpikingNet] = field(default_factory=dict)
    conversion: dict[str, Any] = field(default_factory=dict)
    stage_records: list[dict[str, Any]] = field(default_factory=list)


def _check_data(config: SnnConfig, context: PassContext):
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
    return train


def _space(config: SnnConfig) -> SearchSpace:
    """With IIR, the T of each stage (the networks ``prepare`` keeps); without, powers of two and the default."""
    if config.iir:
        choices = tuple(sorted(config.stages()))
    else:
        choices = tuple(sorted({*(t for t in PLAIN_TIMESTEPS if t <= MAX_TIMESTEPS), config.timesteps}))
    return SearchSpace("snn", (Site(TIMESTEPS_SITE, "timesteps", choices, config.timesteps),))


@register_pass
class SnnPass(Pass[SnnConfig]):
    kind = "snn"
    config_type = SnnConfig

    def prepare(self, module: nn.Module, config: SnnConfig, context: PassContext) -> SnnPrepared:
        """Convert once (threshold balancing on the calibration data); with IIR, also run every stage and keep
        a copy of the network after each."""
        import torch

        from repfx_deploy.passes.snn.convert import convert
        from repfx_deploy.passes.snn.iir import iir_train

        train = _check_data(config, context)
        assert context.calibration is not None
        x = torch.from_numpy(context.calibration.x[: config.calibration_samples])
        snn, report = convert(module, x.split(config.calibration_batch_size), config)
        networks: dict[int, SpikingNet] = {}
        records: list[dict[str, Any]] = []
        if config.iir:

            def keep(T: int, net: SpikingNet) -> dict[str, Any]:
                networks[T] = copy.deepcopy(net)
                return {}

            records = iir_train(snn, module, train, config, after_stage=keep)
        else:
            networks[0] = snn  # one converted network serves every T
        return SnnPrepared(
            module,
            config,
            context,
            _space(config),
            count(module, context),
            networks=networks,
            conversion=report.to_dict(),
            stage_records=records,
        )

    def space(self, module: nn.Module, config: SnnConfig, context: PassContext) -> SearchSpace:
        """The same space ``prepare`` gives, without converting or training."""
        _check_data(config, context)
        return _space(config)

    def apply_assignment(self, prepared: Prepared[SnnConfig], assignment: Assignment) -> PassResult:
        from repfx_deploy.passes.snn.stats import spike_stats

        assert isinstance(prepared, SnnPrepared)
        started = time.perf_counter()
        decisions = prepared.space.complete(assignment)
        T = int(decisions[TIMESTEPS_SITE])
        config = prepared.config.with_assignment(decisions)
        snn = copy.deepcopy(prepared.networks[T if config.iir else 0])
        snn.set_timesteps(T)
        snn.eval()
        extras: dict[str, Any] = {
            "config": {**config.to_table(), "iir_stages": list(config.stages())},
            "conversion": prepared.conversion,
        }
        if config.iir:
            extras["iir_stages"] = [r for r in prepared.stage_records if r["timesteps"] in config.stages()]
            extras["thresholds_after_iir"] = {name: round(float(n.threshold.detach()), 6) for name, n in snn.neurons()}
            # the forward clamps the leak to [0, 1]; report what it uses
            extras["leaks_after_iir"] = {
                name: round(float(n.leak.detach().clamp(0, 1)), 6) for name, n in snn.neurons()
            }
        calibration = prepared.context.calibration
        assert calibration is not None
        import torch

        probe = torch.from_numpy(calibration.x[: config.stats_samples])
        extras["spikes"] = spike_stats(
            snn,
            probe.split(config.calibration_batch_size),
            energy_mac_pj=config.energy_mac_pj,
            energy_ac_pj=config.energy_ac_pj,
        )
        return finish(prepared, snn, decisions, started, extras)
