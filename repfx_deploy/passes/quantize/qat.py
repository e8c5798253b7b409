"""Quantization-aware training: LSQ scales and weights fine-tuned against the float model.

Starts from the PTQ-calibrated model (so the scales start where PTQ put them), switches every quantizer to the
LSQ path (round with a straight-through gradient; the step size learns with its gradient scaled by
1/sqrt(N * qmax), Esser et al. 2020), and trains with the shared recovery loop (``passes.recovery.distill``:
distillation from the float model, resumable from its checkpoint). Then freezes the learned scales for export.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.quantize.graph import QuantizedModel

if TYPE_CHECKING:
    from repfx_deploy.data.datasets import Dataset


def qat_finetune(
    work: QuantizedModel, teacher: nn.Module, data: Dataset, config: QuantizeConfig, *, batch: int
) -> dict:
    """Fine-tune ``work`` (calibrated) in place; ``batch`` is the batch its graph takes. Returns the run's record."""
    from repfx_deploy.passes.recovery import FinetuneConfig, distill

    trainable = _set_learning(work, True)
    try:
        ft = FinetuneConfig(
            epochs=config.finetune_epochs,
            steps=config.finetune_steps,
            batch_size=batch,
            lr=config.finetune_lr,
            # Adam: scales and weights differ by orders of magnitude, and a per-parameter step copes with both
            optimizer="adam",
            weight_decay=0.0,  # decaying a step size toward 0 would shrink the quantization range
            augment="crop-flip" if data.x.ndim == 4 else "none",
            checkpoint=config.checkpoint,
            seed=config.seed,
            progress=config.progress,
        )
        result = distill(work, teacher, data, ft)
    finally:
        _set_learning(work, False)
    return {
        **result.to_dict(),
        "trainable_tensors": trainable,
        "lr": config.finetune_lr,
        "optimizer": "adam",
        "batch_size": batch,
    }


def _set_learning(work: QuantizedModel, on: bool) -> int:
    """Quantizers to the LSQ path with gradients (``on``) or back to frozen constants; returns tensors made trainable."""
    count = 0
    for p in work.parameters():
        p.requires_grad_(False)
    for a in work.act_quants().values():
        a.state = "learn" if on else "frozen"
        if a.source is None:
            a.scale.requires_grad_(on)
            count += on
    for w in work.weight_quants().values():
        w.state = "learn" if on else "frozen"
        w.weight.requires_grad_(on)
        w.scale.requires_grad_(on)
        count += 2 * on
    if not on:
        work.freeze()
    return count
