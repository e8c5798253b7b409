"""The recipe's ``kind = "lowrank"``: validate the options, (TRP-train,) factorize, re-calibrate BatchNorm,
fine-tune, report.

    [[passes]]
    kind = "lowrank"
    params_ratio = 0.5           # keep half the parameters (or macs_ratio = 0.5, or energy = 0.95)
    criterion = "energy"         # or "sensitivity" (measured on [data] calibration)
    layer_ranks = { "fc1" = 32 } # pinned ranks; "dense" keeps a layer whole
    conv_scheme = "channel"      # channel | spatial | auto
    finetune_epochs = 1          # distillation from the original model on [data] train (or finetune_steps = N)
    trained_rank = false         # TRP: a nuclear-norm-penalised fine-tune of the dense layers first

See ``config.py`` for every key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.registry import PassContext, PassResult, register_pass

if TYPE_CHECKING:
    import torch.nn as nn

log = logging.getLogger("repfx_deploy.passes.lowrank")


@register_pass("lowrank")
def lowrank_handler(module: "nn.Module", options: Mapping[str, Any], context: PassContext) -> PassResult:
    """Factorize ``module`` as the options say; fine-tune with distillation from the unfactorized module."""
    from repfx_deploy.passes.lowrank.config import LowRankOptions
    from repfx_deploy.passes.lowrank.core import apply, choose_ranks, prepare, summarize
    from repfx_deploy.passes.lowrank.trp import nuclear_norm, nuclear_penalty
    from repfx_deploy.passes.recovery import distill, recalibrate_bn

    opts = LowRankOptions.from_options(options, context.target_name)
    prepared = prepare(module, context.input_specs, opts.config)
    trp_stats = None
    if opts.trp.enabled:
        data, source = _finetune_data(context)
        schemes = prepared.default_schemes()
        start = float(nuclear_norm(prepared.work, schemes).detach())
        result = distill(prepared.work, module, data, opts.recovery.finetune, extra_loss=nuclear_penalty(schemes, opts.trp.nuclear_weight))
        prepared.work.eval()
        trp_stats = {"data": source, "nuclear_weight": opts.trp.nuclear_weight, "nuclear_norm_before": round(start, 4),
                     "nuclear_norm_after": round(float(nuclear_norm(prepared.work, schemes).detach()), 4), "finetune": result.to_dict()}
    chosen, record = choose_ranks(prepared, context.input_specs, opts.config, context.calibration)
    stats = summarize(prepared, apply(prepared.work, chosen), record)
    factored = prepared.work
    if trp_stats is not None:
        stats["trained_rank"] = trp_stats
    if opts.recovery.bn_recalibrate:
        if context.calibration is not None:
            stats["bn_recalibrated"] = recalibrate_bn(factored, context.calibration, batches=opts.recovery.bn_batches)
        else:
            stats["bn_recalibrated"] = 0
    if opts.recovery.finetune is not None:
        data, source = _finetune_data(context)
        stats["finetune"] = distill(factored, module, data, opts.recovery.finetune).to_dict() | {"data": source}
        factored.eval()
    return PassResult(factored, stats)  # MACs and parameters before/after: apply_passes counts them


def _finetune_data(context: PassContext):
    if context.train is not None and len(context.train) > 0:
        return context.train, "train"
    if context.calibration is None or len(context.calibration) == 0:
        raise RecipeError(
            "Fine-tuning in the lowrank pass needs training data, and neither [data] train nor calibration is set.",
            "Set [data] train in the recipe, or drop finetune_epochs/finetune_steps and trained_rank.",
        )
    log.warning("lowrank: fine-tuning on the calibration set (%d samples): a small set overfits; set [data] train", len(context.calibration))
    return context.calibration, "calibration"
