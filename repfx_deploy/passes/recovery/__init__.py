"""Recovery after a lossy pass: BatchNorm re-calibration and knowledge-distillation fine-tuning.

Shared by every pass that needs it (pruning, quantization-aware training, ...), so there is one training loop:

    from repfx_deploy.passes.recovery import FinetuneConfig, distill, recalibrate_bn

    recalibrate_bn(pruned, calibration)                      # cheap, no labels, no gradients
    result = distill(pruned, original, train, FinetuneConfig(epochs=1, augment="crop-flip"))
"""

from repfx_deploy.passes.recovery.bn import recalibrate_bn
from repfx_deploy.passes.recovery.distill import FinetuneConfig, FinetuneResult, distill

__all__ = ["FinetuneConfig", "FinetuneResult", "distill", "recalibrate_bn"]
