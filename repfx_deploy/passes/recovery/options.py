"""The recipe keys of recovery (BatchNorm re-calibration, distillation fine-tuning), parsed in one place.

Every pass that recovers accuracy after a lossy change accepts the same keys with the same meaning:

    bn_recalibrate = true       # re-estimate BatchNorm statistics on [data] calibration
    bn_batches = 32
    finetune_epochs = 1         # or finetune_steps = N (wins when > 0); no budget: no fine-tuning
    lr = 0.01, batch_size = 64, augment = "crop-flip", temperature = 4.0, alpha = 0.9,
    optimizer = "sgd", weight_decay = 5e-4, seed = 0, checkpoint = "ft.ckpt"   # resumable
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RecipeError

if TYPE_CHECKING:
    from repfx_deploy.passes.recovery.distill import FinetuneConfig

FINETUNE_KEYS = (
    "lr",
    "batch_size",
    "augment",
    "temperature",
    "alpha",
    "optimizer",
    "weight_decay",
    "seed",
    "checkpoint",
)
RECOVERY_KEYS = ("bn_recalibrate", "bn_batches", "finetune_epochs", "finetune_steps", *FINETUNE_KEYS)


@dataclass(frozen=True)
class RecoveryOptions:
    """BatchNorm re-calibration on or off (and its batch count), and the fine-tuning run or None."""

    bn_recalibrate: bool = True
    bn_batches: int = 32
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.bn_recalibrate, bool):
            raise ValueError(f"bn_recalibrate must be true or false; got {self.bn_recalibrate!r}")
        if isinstance(self.bn_batches, bool) or not isinstance(self.bn_batches, int) or self.bn_batches < 1:
            raise ValueError(f"bn_batches must be a positive integer; got {self.bn_batches!r}")


def parse_recovery(
    options: Mapping[str, Any], pass_kind: str, *, overrides: Mapping[str, Any] | None = None
) -> RecoveryOptions:
    """The recovery keys of a pass's recipe table (other keys are the caller's to check).

    ``overrides`` are FinetuneConfig defaults the pass prefers (e.g. a smaller learning rate), still overridden
    by the recipe. Raises ``RecipeError`` for a bad value, or for fine-tuning options without a budget.
    """
    from repfx_deploy.passes.recovery.distill import FinetuneConfig

    def bad(e: Exception) -> RecipeError:
        return RecipeError(
            f"Bad recovery option in the {pass_kind} pass: {e}", "Fix the value in the recipe's [[passes]] table."
        )

    try:
        epochs = float(options.get("finetune_epochs", 0.0))
        steps = int(options.get("finetune_steps", 0))
    except (TypeError, ValueError) as e:
        raise bad(e) from e
    finetune = None
    if epochs > 0 or steps > 0:
        ft = dict(overrides or {}) | {k: options[k] for k in FINETUNE_KEYS if k in options}
        if "checkpoint" in ft:
            ft["checkpoint"] = Path(ft["checkpoint"])
        try:
            finetune = FinetuneConfig(epochs=epochs if epochs > 0 else 1.0, steps=steps, **ft)
        except (TypeError, ValueError) as e:
            raise bad(e) from e
    elif any(k in options for k in FINETUNE_KEYS):
        raise RecipeError(
            f"Fine-tuning options are set in the {pass_kind} pass but no fine-tuning budget is.",
            "Set finetune_epochs or finetune_steps, or drop the fine-tuning options.",
        )
    try:
        return RecoveryOptions(options.get("bn_recalibrate", True), options.get("bn_batches", 32), finetune)
    except ValueError as e:
        raise bad(e) from e
