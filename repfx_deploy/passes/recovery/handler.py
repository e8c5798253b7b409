"""The recipe's ``kind = "recover"``: BatchNorm re-calibration, then a distillation fine-tune from the model as
it was before any pass (the teacher), on ``[data] train``.

    [[passes]]
    kind = "prune"
    macs_ratio = 0.5

    [[passes]]
    kind = "recover"
    finetune_epochs = 1          # or finetune_steps = N (wins when > 0); 0 and 0: BatchNorm re-calibration only
    lr = 0.01
    augment = "crop-flip"

The same keys mean the same thing after every lossy pass; the pass has no per-site knob (its space is empty).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.protocol import (
    Assignment,
    Pass,
    PassConfig,
    PassContext,
    PassResult,
    Prepared,
    SearchSpace,
    count,
    finish,
)
from repfx_deploy.passes.registry import register_pass

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.passes.recovery.distill import FinetuneConfig

log = logging.getLogger("repfx_deploy.passes.recover")


@dataclass(frozen=True)
class RecoverConfig(PassConfig):
    """How to recover accuracy after a lossy pass.

    ``finetune_epochs``/``finetune_steps``: the distillation budget (steps win when > 0; both 0: BatchNorm only).
    ``data``: ``"auto"`` trains on ``[data] train`` and falls back, with a warning, to the calibration set.
    The other keys are ``FinetuneConfig``'s (``passes/recovery/distill.py``), with the same defaults.
    """

    kind = "recover"

    finetune_epochs: float = 1.0
    finetune_steps: int = 0
    lr: float = 0.01
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.9
    augment: Literal["none", "crop-flip"] = "none"
    seed: int = 0
    checkpoint: Path | None = None
    bn_recalibrate: bool = True
    bn_batches: int = 32
    data: Literal["auto", "train", "calibration"] = "auto"

    def __post_init__(self) -> None:
        if self.finetune_epochs < 0 or self.finetune_steps < 0:
            raise ValueError(
                f"finetune_epochs and finetune_steps must be >= 0; got {self.finetune_epochs}, {self.finetune_steps}"
            )
        if self.bn_batches < 1:
            raise ValueError(f"bn_batches must be >= 1; got {self.bn_batches}")
        _ = self.finetune  # builds a FinetuneConfig, which checks the remaining keys

    @property
    def finetune(self) -> FinetuneConfig | None:
        """The distillation run, or None when the budget is zero."""
        from repfx_deploy.passes.recovery.distill import FinetuneConfig

        if self.finetune_epochs <= 0 and self.finetune_steps <= 0:
            return None
        return FinetuneConfig(
            epochs=self.finetune_epochs if self.finetune_epochs > 0 else 1.0,
            steps=self.finetune_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            temperature=self.temperature,
            alpha=self.alpha,
            augment=self.augment,
            checkpoint=self.checkpoint,
            seed=self.seed,
        )

    def with_assignment(self, assignment: Assignment) -> RecoverConfig:
        if assignment:
            raise RecipeError(
                f"The recover pass has no sites; got {sorted(assignment)}.", "Leave it out of the assignment."
            )
        return self


def finetune_data(context: PassContext, choice: str, who: str) -> tuple[Dataset, str]:
    """The data a fine-tune trains on: ``[data] train``, else (``choice`` "auto") the calibration set with a
    warning; ``RecipeError`` when there is none."""
    if choice in ("auto", "train") and context.train is not None and len(context.train) > 0:
        return context.train, "train"
    if choice in ("auto", "calibration") and context.calibration is not None and len(context.calibration) > 0:
        if choice == "auto":
            log.warning(
                "%s: fine-tuning on the calibration set (%d samples): a small set overfits; set [data] train",
                who,
                len(context.calibration),
            )
        return context.calibration, "calibration"
    raise RecipeError(
        f"The {who} pass needs {'training' if choice != 'calibration' else 'calibration'} data, and none was given.",
        "Set [data] train (or calibration) in the recipe, or drop the pass.",
    )


@register_pass
class RecoverPass(Pass[RecoverConfig]):
    kind = "recover"
    config_type = RecoverConfig

    def prepare(self, module: nn.Module, config: RecoverConfig, context: PassContext) -> Prepared[RecoverConfig]:
        if config.finetune is not None:
            finetune_data(context, config.data, "recover")  # fail before anything runs
        return Prepared(module, config, context, SearchSpace("recover"), count(module, context))

    def apply_assignment(self, prepared: Prepared[RecoverConfig], assignment: Assignment) -> PassResult:
        from repfx_deploy.passes.recovery import distill, recalibrate_bn

        started = time.perf_counter()
        prepared.space.complete(assignment)
        config, context = prepared.config, prepared.context
        student = copy.deepcopy(prepared.module)
        extras: dict[str, Any] = {}
        if config.bn_recalibrate:
            if context.calibration is not None and len(context.calibration) > 0:
                extras["bn_recalibrated"] = recalibrate_bn(student, context.calibration, batches=config.bn_batches)
            else:
                log.warning(
                    "recover: no calibration data, so BatchNorm statistics were not re-calibrated (set [data] calibration)"
                )
                extras["bn_recalibrated"] = 0
        finetune = config.finetune
        if finetune is not None:
            data, source = finetune_data(context, config.data, "recover")
            teacher = context.reference if context.reference is not None else prepared.module
            extras["finetune"] = distill(student, teacher, data, finetune).to_dict() | {"data": source}
            student.eval()
        return finish(prepared, student, {}, started, extras)
