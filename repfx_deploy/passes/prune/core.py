"""``prune``: the Python entry point of structured pruning (the recipe handler wraps it)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repfx_deploy.passes.prune.config import PruneConfig

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset

log = logging.getLogger("repfx_deploy.passes.prune")


@dataclass
class PruneResult:
    """The pruned module (a new object; the input is untouched) and what was done, JSON-ready."""

    module: "nn.Module"
    stats: dict[str, Any] = field(default_factory=dict)


def prune(
    module: "nn.Module",
    example_inputs: tuple["torch.Tensor", ...],
    config: PruneConfig = PruneConfig(),
    *,
    calibration: "Dataset | None" = None,
) -> PruneResult:
    """Remove whole channels, heads and hidden units from a copy of ``module``.

    ``example_inputs`` are traced through the model (batch size 1 is fine). The result is a dense module of
    the same class (or a ``torch.fx.GraphModule`` when a channel count is a bare literal in a forward; the
    stats say so under ``module_type``). Raises ``PassError`` naming the layer it cannot handle.

        >>> result = prune(model, (torch.zeros(1, 3, 32, 32),), PruneConfig(macs_ratio=0.5, round_to=8))
        >>> result.stats["macs_estimate_ratio"]   # about 0.5
    """
    from repfx_deploy.passes.prune.apply import apply_plan
    from repfx_deploy.passes.prune.graph import analyze, matches
    from repfx_deploy.passes.prune.importance import class_scores
    from repfx_deploy.passes.prune.plan import (
        estimate_macs,
        find_groups,
        make_plan,
        refine_to_target,
        search_ratio,
    )
    from repfx_deploy.passes.prune.torch_layers import make_traceable

    model = copy.deepcopy(module).eval()
    swapped = make_traceable(model)
    example = tuple(example_inputs)
    graph = analyze(model, example, ignore=config.ignore)
    groups = find_groups(graph)
    scores = class_scores(model, graph, config.importance, calibration=calibration, batches=config.taylor_batches, batch_size=config.taylor_batch_size)
    round_to = config.round_to or 1

    def plan_for(ratio: float, widths: dict[int, int] | None = None):
        return make_plan(graph, groups, scores, ratio=ratio, layer_ratios=config.layer_ratios, round_to=round_to,
                         max_ratio=config.max_ratio, widths=widths)

    if config.macs_ratio is not None:
        plan = search_ratio(plan_for, graph, config.macs_ratio, config.max_ratio)
        if config.refine:
            frozen = frozenset(i for i, g in enumerate(groups) if any(matches(n, (p,)) for p, _ in config.layer_ratios for n in g.producers))
            plan = refine_to_target(plan, lambda widths: plan_for(plan.ratio, widths), graph, groups, scores,
                                    config.macs_ratio, round_to, frozen=frozen)
    else:
        plan = plan_for(config.ratio)
    full = estimate_macs(graph, None)
    kept_macs = estimate_macs(graph, plan.keep)
    pruned, record = apply_plan(model, graph, plan.keep, example)
    removed = sum(1 for r, k in plan.keep.items() if not k)
    log.info("prune: ratio %.3f, %d channel classes removed, estimated MACs kept %.3f", plan.ratio, removed, kept_macs / max(full, 1))
    stats = {
        "ratio": round(plan.ratio, 4),
        "importance": config.importance,
        "round_to": round_to,
        "macs_target_ratio": config.macs_ratio,
        "macs_estimate_ratio": round(kept_macs / max(full, 1), 4),
        "groups": plan.groups,
        "notes": graph.notes + [f"{n}: replaced by an equivalent traceable module with separate q/k/v projections" for n in swapped],
        **record,
    }
    return PruneResult(pruned, stats)
