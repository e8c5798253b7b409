"""The recipe's ``kind = "prune"``: structured channel pruning, then BatchNorm re-calibration.

    [[passes]]
    kind = "prune"
    macs_ratio = 0.5             # keep half the MACs (or ratio = 0.3: remove 30 % of every group's channels)
    importance = "l2"            # l1 | l2 | bn_scale | taylor
    round_to = 8                 # default: the target profile's channel_multiple
    ignore = ["head"]            # layers left whole
    layer_ratios = { "layer3.*" = 0.6 }
    channels = { "layer1.0.conv1" = 8 }   # channels kept by a site: wins over the ratios
    bn_recalibrate = true        # on the [data] calibration set

    [[passes]]
    kind = "recover"             # distillation fine-tuning from the unpruned model
    finetune_epochs = 1

Its space: one site per group of coupled channels (``space.py``), knob ``channels_kept``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from repfx_deploy.passes.protocol import Assignment, Pass, PassContext, PassResult, Prepared
from repfx_deploy.passes.prune import core
from repfx_deploy.passes.prune.config import PruneConfig
from repfx_deploy.passes.registry import register_pass

if TYPE_CHECKING:
    import torch.nn as nn


@register_pass
class PrunePass(Pass[PruneConfig]):
    """``prepare`` traces the model, builds its channel dependency graph, scores the channels and plans the
    config's own result (see ``core.prepare``); ``apply_assignment`` plans from those scores and slices a copy."""

    kind = "prune"
    config_type = PruneConfig

    def prepare(self, module: nn.Module, config: PruneConfig, context: PassContext) -> core.PrunePrepared:
        return core.prepare(module, config, context)

    def apply_assignment(self, prepared: Prepared[PruneConfig], assignment: Assignment) -> PassResult:
        if not isinstance(prepared, core.PrunePrepared):
            raise TypeError(f"the prune pass applies what its own prepare() returned, not {type(prepared).__name__}")
        return core.apply_assignment(prepared, assignment)
