"""The recipe's ``kind = "lowrank"``: truncated-SVD factorization of linears and convs, one site per layer.

    [[passes]]
    kind = "lowrank"
    params_ratio = 0.5           # keep half the parameters (or macs_ratio = 0.5, or energy = 0.95)
    criterion = "energy"         # or "sensitivity" (measured on [data] calibration)
    layer_ranks = { "fc1" = 32 } # pinned ranks by pattern; "dense" keeps a layer whole
    ranks = { "layer1.0.conv1" = 16 }   # pinned ranks by exact name (what a search's assignment becomes)
    conv_scheme = "channel"      # channel | spatial | auto
    trained_rank = false         # TRP: a nuclear-norm-penalised training of the dense layers first (trp_* keys)

    [[passes]]
    kind = "recover"             # the fine-tune after factorizing (finetune_epochs, lr, ... live there now)

The space: one site per factorizable layer that some rank makes cheaper, named by its module name, knob
``rank_kept``; choices are ranks that are multiples of ``round_to`` (default: the target's ``channel_multiple``)
up to the largest rank whose pair has fewer parameters and MACs than the layer, thinned to about 12, then
``"dense"`` (the layer kept whole, the unchanged choice). With ``conv_scheme = "auto"`` a conv's other scheme's
ranks are spelled ``"spatial:16"``. The default is what the config's criterion picks. See ``config.py``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repfx_deploy.passes.lowrank.config import LowRankConfig
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

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.passes.lowrank.core import Candidate
    from repfx_deploy.passes.lowrank.ranks import Option

log = logging.getLogger("repfx_deploy.passes.lowrank")


@dataclass
class LowRankPrepared(Prepared[LowRankConfig]):
    """What ``prepare`` computed once: the working copy (attention unfused, TRP-trained), every candidate's SVDs,
    the criterion's option per candidate (sensitivity measured, budget spent), and the TRP record."""

    work: nn.Module
    candidates: dict[str, Candidate]
    chosen: dict[str, Option]
    record: dict[str, Any]
    unfused: list[str]
    multiple: int
    trained_rank: dict[str, Any] | None
    prepare_s: float


@register_pass
class LowRankPass(Pass[LowRankConfig]):
    kind = "lowrank"
    config_type = LowRankConfig

    def prepare(self, module: nn.Module, config: LowRankConfig, context: PassContext) -> LowRankPrepared:
        """Once per model and config, on a deep copy (``module`` is not touched):

        1. unfuse attention (``unfuse_attention``: torch's fused attention reads its projection weights
           directly; the prune pass's stand-ins have plain linears) and find the factorizable layers and their
           costs (one forward pass with hooks);
        2. TRP (``trained_rank``): train the copy with the nuclear-norm penalty on the dense candidate layers,
           distilling from ``module`` on ``[data] train`` (else, with a warning, calibration);
        3. the full thin SVD of every candidate layer for each allowed scheme, kept up to its largest useful rank;
        4. the criterion: pins, energy ranks, or the budget spent greedily (with ``criterion = "sensitivity"``
           each layer's output error measured at ``sensitivity_points`` ranks on calibration batches);
        5. the space: one site per layer with more than one choice, its default the criterion's option.
        """
        from repfx_deploy.data.tensors import zeros_for
        from repfx_deploy.passes.lowrank.core import choose_ranks, find_candidates, site_choices, to_choice
        from repfx_deploy.passes.prune.torch_layers import make_traceable

        started = time.perf_counter()
        before = count(module, context)
        multiple = config.round_to or context.channel_multiple
        work = copy.deepcopy(module).eval()
        unfused = make_traceable(work) if config.unfuse_attention else []
        example = tuple(zeros_for(context.input_specs))
        trp = None
        if config.trained_rank:
            trp = _train_ranks(work, module, example, config, context)
        candidates = find_candidates(work, example, config)
        chosen, record = choose_ranks(work, candidates, config, multiple, context.input_specs, context.calibration)
        sites = []
        for name, cand in candidates.items():
            default = to_choice(cand, chosen[name].scheme, chosen[name].rank)
            choices = site_choices(cand, multiple, default)
            if len(choices) > 1:
                sites.append(Site(name, "rank_kept", choices, default, unchanged="dense"))
        space = SearchSpace(self.kind, tuple(sites))
        return LowRankPrepared(
            module,
            config,
            context,
            space,
            before,
            work,
            candidates,
            chosen,
            record,
            unfused,
            multiple,
            trp,
            time.perf_counter() - started,
        )

    def apply_assignment(self, prepared: Prepared[LowRankConfig], assignment: Assignment) -> PassResult:
        """A copy of the prepared working model with each site's truncated factors installed (sites left out:
        their default; layers that are not sites: as the criterion left them), then BatchNorm re-calibrated on
        the calibration data (``bn_recalibrate``). No fine-tune: that is the recover pass."""
        from repfx_deploy.passes.lowrank.core import install, to_option

        assert isinstance(prepared, LowRankPrepared)
        started = time.perf_counter()
        decisions = prepared.space.complete(assignment)
        chosen = dict(prepared.chosen)
        for name, choice in decisions.items():
            chosen[name] = to_option(name, prepared.candidates[name], choice)
        student = copy.deepcopy(prepared.work)
        layers = install(student, prepared.candidates, chosen)
        record = prepared.record
        extras: dict[str, Any] = {
            "mode": record["mode"],
            **{k: v for k, v in record.items() if k != "mode"},
            "round_to": prepared.multiple,
            "unfused_attention": list(prepared.unfused),
            "candidates": len(layers),
            "factorized": sum(r["scheme"] != "dense" for r in layers),
            "layers": layers,
            "prepare_s": round(prepared.prepare_s, 3),
        }
        if prepared.trained_rank is not None:
            extras["trained_rank"] = prepared.trained_rank
        if prepared.config.bn_recalibrate:
            extras["bn_recalibrated"] = _recalibrate(student, prepared)
        return finish(prepared, student, decisions, started, extras)


def _train_ranks(
    work: nn.Module, teacher: nn.Module, example: tuple[Any, ...], config: LowRankConfig, context: PassContext
) -> dict[str, Any]:
    """TRP, in place on ``work``: distill from ``teacher`` with the nuclear-norm penalty on every candidate layer
    (each with its first scheme's matrix); returns the record (norms before and after, the run)."""
    from repfx_deploy.passes.lowrank.core import allowed_schemes
    from repfx_deploy.passes.lowrank.layers import find_layers
    from repfx_deploy.passes.lowrank.trp import nuclear_norm, nuclear_penalty
    from repfx_deploy.passes.recovery import distill
    from repfx_deploy.passes.recovery.handler import finetune_data

    data, source = finetune_data(context, config.trp_data, "lowrank (trained_rank)")
    schemes = {
        name: allowed_schemes(shape, config)[0] for name, shape in find_layers(work, example, config.ignore).items()
    }
    finetune = config.trp_finetune
    assert finetune is not None
    start = float(nuclear_norm(work, schemes).detach())
    result = distill(work, teacher, data, finetune, extra_loss=nuclear_penalty(schemes, config.nuclear_weight))
    work.eval()
    return {
        "data": source,
        "nuclear_weight": config.nuclear_weight,
        "nuclear_norm_before": round(start, 4),
        "nuclear_norm_after": round(float(nuclear_norm(work, schemes).detach()), 4),
        "finetune": result.to_dict(),
    }


def _recalibrate(student: nn.Module, prepared: LowRankPrepared) -> int:
    import torch.nn as nn

    from repfx_deploy.passes.recovery import recalibrate_bn

    calibration = prepared.context.calibration
    if calibration is not None and len(calibration) > 0:
        return recalibrate_bn(student, calibration, batches=prepared.config.bn_batches)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules()):
        log.warning(
            "lowrank: no calibration data, so BatchNorm statistics were not re-calibrated (set [data] calibration)"
        )
    return 0
