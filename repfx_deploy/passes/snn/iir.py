"""Iterative initialization and retraining (IIR): train the converted SNN with surrogate gradients at the
highest T, then start each lower T from the network the previous stage left, retrain briefly, down to the
deployed T (Chowdhury, Rathi & Roy, "One timestep is all you need", 2021).

Each stage is one run of the shared fine-tuning loop (``recovery.distill``): cross-entropy on the labels plus,
with ``kd_alpha`` > 0, distillation from the ANN. The thresholds and leaks are parameters like the weights.
With ``checkpoint_dir`` each stage checkpoints to its own file, named by the stages up to it
(``stage-5-4-3.ckpt``), written atomically; a rerun skips the finished stages (their checkpoint is at its last
step, so the loop loads it and has nothing left to do) and resumes an interrupted one at its step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from repfx_deploy.passes.recovery.distill import FinetuneConfig, distill
from repfx_deploy.passes.snn.config import SnnConfig

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.passes.snn.simulate import SpikingNet


def stage_config(config: SnnConfig, stages_so_far: tuple[int, ...]) -> FinetuneConfig:
    """The fine-tuning config of the stage ending ``stages_so_far``."""
    ckpt = None
    if config.checkpoint_dir is not None:
        ckpt = config.checkpoint_dir / f"stage-{'-'.join(str(t) for t in stages_so_far)}.ckpt"
    return FinetuneConfig(
        epochs=config.epochs_per_stage,
        steps=config.steps_per_stage,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        temperature=config.temperature,
        alpha=config.kd_alpha,
        augment=config.augment,
        checkpoint=ckpt,
        seed=config.seed,
        progress=config.progress,
    )


def iir_train(
    snn: SpikingNet,
    ann: nn.Module,
    data: Dataset,
    config: SnnConfig,
    *,
    after_stage: Callable[[int, SpikingNet], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run every stage of ``config.stages()`` on ``snn`` in place (it ends at ``config.timesteps``); returns one
    record per stage, with whatever ``after_stage(T, snn)`` returns (e.g. an accuracy) merged in."""
    records = []
    stages = config.stages()
    for i, T in enumerate(stages):
        snn.set_timesteps(T)
        began = time.perf_counter()
        result = distill(snn, ann, data, stage_config(config, stages[: i + 1]))
        record = {"timesteps": T, **result.to_dict(), "stage_seconds": round(time.perf_counter() - began, 3)}
        if after_stage is not None:
            record.update(after_stage(T, snn))
        records.append(record)
    snn.set_timesteps(config.timesteps)
    return records
