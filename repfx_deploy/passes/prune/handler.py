"""The recipe's ``kind = "prune"``: validate the options, prune, re-calibrate BatchNorm, fine-tune, report.

    [[passes]]
    kind = "prune"
    macs_ratio = 0.5             # keep half the MACs (or ratio = 0.3: remove 30 % of every group's channels)
    importance = "l2"            # l1 | l2 | bn_scale | taylor
    round_to = 8                 # default: the target profile's channel_multiple
    ignore = ["head"]            # layers left whole
    layer_ratios = { "layer3.*" = 0.6 }
    bn_recalibrate = true        # on the [data] calibration set
    finetune_epochs = 1          # distillation from the original model on [data] train (or steps = N)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.recovery.options import RECOVERY_KEYS, parse_recovery
from repfx_deploy.passes.registry import PassContext, PassResult, register_pass

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.passes.prune.config import PruneConfig
    from repfx_deploy.passes.recovery import FinetuneConfig

log = logging.getLogger("repfx_deploy.passes.prune")

PRUNE_KEYS = ("ratio", "macs_ratio", "layer_ratios", "importance", "round_to", "ignore", "max_ratio", "refine")


def parse_options(options: Mapping[str, Any], target_name: str) -> tuple["PruneConfig", dict, "FinetuneConfig | None"]:
    """Recipe table -> (PruneConfig, BN options, FinetuneConfig or None); ``RecipeError`` on unknown keys or bad values."""
    from repfx_deploy.passes.prune.config import PruneConfig
    from repfx_deploy.targets import get_profile

    unknown = sorted(set(options) - set(PRUNE_KEYS) - set(RECOVERY_KEYS))
    if unknown:
        raise RecipeError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} in the prune pass.",
            f"Use only: {', '.join(PRUNE_KEYS + RECOVERY_KEYS)}.",
        )
    prune_opts = {k: options[k] for k in PRUNE_KEYS if k in options}
    if "layer_ratios" in prune_opts:
        if not isinstance(prune_opts["layer_ratios"], Mapping):
            raise RecipeError("layer_ratios must be a table of layer name pattern = ratio.", 'Write layer_ratios = { "layer3.*" = 0.5 }.')
    if prune_opts.get("round_to") is None:
        prune_opts["round_to"] = get_profile(target_name).channel_multiple
    try:
        config = PruneConfig(**prune_opts)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"Bad prune pass option: {e}", "Fix the value in the recipe's [[passes]] table.") from e
    recovery = parse_recovery(options, "prune")
    bn = {"enabled": recovery.bn_recalibrate, "batches": recovery.bn_batches}
    return config, bn, recovery.finetune


@register_pass("prune")
def prune_handler(module: "nn.Module", options: Mapping[str, Any], context: PassContext) -> PassResult:
    """Prune ``module``; re-calibrate BatchNorm on the calibration data; fine-tune with distillation from the
    unpruned module on the training data (or, with a warning, the calibration data)."""
    from repfx_deploy.data.tensors import zeros_for
    from repfx_deploy.passes.prune.core import prune
    from repfx_deploy.passes.recovery import distill, recalibrate_bn

    config, bn, finetune = parse_options(options, context.target_name)
    if config.importance == "taylor" and context.calibration is None:
        raise RecipeError("importance = \"taylor\" needs calibration data.", "Set [data] calibration in the recipe (or --calibration).")
    result = prune(module, tuple(zeros_for(context.input_specs)), config, calibration=context.calibration)
    pruned = result.module
    stats = dict(result.stats)
    if bn["enabled"]:
        if context.calibration is not None:
            stats["bn_recalibrated"] = recalibrate_bn(pruned, context.calibration, batches=bn["batches"])
        else:
            log.warning("prune: no calibration data, so BatchNorm statistics were not re-calibrated (set [data] calibration)")
            stats["bn_recalibrated"] = 0
    if finetune is not None:
        data = context.train
        if data is None:
            if context.calibration is None:
                raise RecipeError(
                    "Fine-tuning after pruning needs training data, and neither [data] train nor calibration is set.",
                    "Set [data] train in the recipe (a labeled image archive or .npz), or drop finetune_epochs/finetune_steps.",
                )
            log.warning("prune: fine-tuning on the calibration set (%d samples): a small set overfits; set [data] train", len(context.calibration))
            data = context.calibration
            stats["finetune_data"] = "calibration"
        else:
            stats["finetune_data"] = "train"
        stats["finetune"] = distill(pruned, module, data, finetune).to_dict()
        pruned.eval()
    stats["layers"] = _layer_changes(module, pruned)  # MACs and parameters: apply_passes counts them
    return PassResult(pruned, stats)


def _layer_changes(before: "nn.Module", after: "nn.Module") -> list[dict]:
    """Per layer whose weight shrank: its weight shape before and after."""
    shapes = {n: tuple(p.shape) for n, p in after.named_parameters()}
    out = []
    for name, p in before.named_parameters():
        if name.endswith("weight") and name in shapes and shapes[name] != tuple(p.shape):
            out.append({"layer": name.removesuffix(".weight"), "before": list(p.shape), "after": list(shapes[name])})
    return out
