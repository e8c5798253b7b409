"""Structured pruning as the pass protocol runs it: ``prepare`` once per model and config, then
``apply_assignment`` per choice of channels kept; ``prune`` is the one-call Python entry.

    prepared = prepare(model, PruneConfig(macs_ratio=0.5), context)     # trace, score, plan: seconds
    result = apply_assignment(prepared, {"layer1.0.conv1": 8})          # slice a copy: milliseconds
    result = prune(model, (torch.zeros(1, 3, 32, 32),), PruneConfig(macs_ratio=0.5, round_to=8))

The recipe's ``kind = "prune"`` (``handler.py``) is these two functions.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.protocol import Assignment, PassContext, PassResult, Prepared, count, finish
from repfx_deploy.passes.prune.config import PruneConfig

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.passes.prune.channels import DependencyGraph
    from repfx_deploy.passes.prune.plan import Group, Plan
    from repfx_deploy.passes.prune.space import SiteGroup
    from repfx_deploy.targets import TargetProfile

log = logging.getLogger("repfx_deploy.passes.prune")


@dataclass
class PrunePrepared(Prepared[PruneConfig]):
    """What ``prepare`` computed, read (never changed) by every ``apply_assignment``.

    ``model``: the copy the graph was traced from (torch's transformer layers swapped for traceable ones),
    whose traced ``graph.gm`` shares its parameters; both are deep-copied together before slicing.
    """

    model: nn.Module
    graph: DependencyGraph
    groups: list[Group]
    scores: dict[int, float]
    sites: list[SiteGroup]
    plan: Plan  # the config's own plan: its kept counts are the space's defaults
    round_to: int
    example: tuple[torch.Tensor, ...]
    full_macs: int  # the MAC model's count of the unpruned graph
    notes: list[str]
    roots: list[int]  # element -> class root, resolved once (the union-find's find() per element is slow)


def prepare(module: nn.Module, config: PruneConfig, context: PassContext) -> PrunePrepared:
    """The assignment-independent work, once: copy ``module`` (left unchanged) and make it traceable, trace it
    and build the channel dependency graph, find the groups (the sites), score every channel class by
    ``config.importance`` (Taylor: gradients on the calibration set), and compute the config's own plan (with
    ``macs_ratio``: the bisection over the global ratio and the refinement), whose kept counts are the defaults.
    ``RecipeError`` when ``channels`` names an unknown site or Taylor importance has no calibration data."""
    from repfx_deploy.data.tensors import zeros_for
    from repfx_deploy.passes.prune.graph import analyze
    from repfx_deploy.passes.prune.importance import class_scores
    from repfx_deploy.passes.prune.plan import config_plan, estimate_macs, find_groups
    from repfx_deploy.passes.prune.space import build_space, fixed_widths, site_groups
    from repfx_deploy.passes.prune.torch_layers import make_traceable

    if config.importance == "taylor" and (context.calibration is None or len(context.calibration) == 0):
        raise RecipeError(
            'importance = "taylor" needs calibration data.',
            'Set [data] calibration in the recipe (or --calibration), or use importance = "l2".',
        )
    before = count(module, context)
    model = copy.deepcopy(module).eval()
    swapped = make_traceable(model)
    example = tuple(zeros_for(context.input_specs))
    round_to = config.round_to or context.channel_multiple
    graph = analyze(model, example, ignore=config.ignore)
    groups = find_groups(graph)
    sites = site_groups(graph, groups, round_to, [n for n, _ in model.named_modules()])
    fixed = fixed_widths(sites, groups, dict(config.channels))
    scores = class_scores(
        model,
        graph,
        config.importance,
        calibration=context.calibration,
        batches=config.taylor_batches,
        batch_size=config.taylor_batch_size,
    )
    plan = config_plan(graph, groups, scores, config, round_to, fixed=fixed, sites=[s.group for s in sites])
    space = build_space(sites, plan, config.max_ratio)
    notes = graph.notes + [
        f"{n}: replaced by an equivalent traceable module with separate q/k/v projections" for n in swapped
    ]
    return PrunePrepared(
        module=module,
        config=config,
        context=context,
        space=space,
        before=before,
        model=model,
        graph=graph,
        groups=groups,
        scores=scores,
        sites=sites,
        plan=plan,
        round_to=round_to,
        example=example,
        full_macs=estimate_macs(graph, None),
        notes=notes,
        roots=[graph.classes.find(e) for e in range(len(graph.classes.parent))],
    )


def apply_assignment(prepared: PrunePrepared, assignment: Assignment) -> PassResult:
    """The module with each site keeping the channels ``assignment`` gives (sites left out: their default).

    Cheap: one greedy plan from the cached scores, a deep copy of the traced model, the slicing, and (when the
    config says so) BatchNorm re-calibration on the calibration set. Nothing of ``prepared`` changes."""
    from repfx_deploy.passes.prune.apply import apply_plan, literals_change
    from repfx_deploy.passes.prune.plan import estimate_macs, make_plan

    started = time.perf_counter()
    decisions = prepared.space.complete(assignment)
    config, graph = prepared.config, prepared.graph
    widths = {s.group: int(decisions[s.name]) for s in prepared.sites}
    plan = make_plan(
        graph,
        prepared.groups,
        prepared.scores,
        ratio=prepared.plan.ratio,
        layer_ratios=config.layer_ratios,
        round_to=prepared.round_to,
        max_ratio=config.max_ratio,
        widths=widths,
    )
    find = prepared.roots.__getitem__
    if literals_change(graph, plan.keep, find):
        # one deepcopy call, so the parameters the traced graph shares with the model stay shared in the copy
        model, gm = copy.deepcopy((prepared.model, graph.gm))
    else:  # the traced graph is not needed: copying (and recompiling) it would double the cost
        model, gm = copy.deepcopy(prepared.model), None
    pruned, record = apply_plan(model, graph, plan.keep, prepared.example, gm=gm, find=find)
    kept_macs = estimate_macs(graph, plan.keep)
    extras: dict[str, Any] = {
        "ratio": round(plan.ratio, 4),
        "importance": config.importance,
        "round_to": prepared.round_to,
        "macs_target_ratio": config.macs_ratio,
        "macs_estimate_ratio": round(kept_macs / max(prepared.full_macs, 1), 4),
        "groups": plan.groups,
        "notes": list(prepared.notes),
        **record,
    }
    if config.bn_recalibrate:
        extras["bn_recalibrated"] = _recalibrate(pruned, prepared.context.calibration, config.bn_batches)
    extras["layers"] = _layer_changes(prepared.module, pruned)
    log.info("prune: %d sites, estimated MACs kept %.3f", len(decisions), extras["macs_estimate_ratio"])
    return finish(prepared, pruned, decisions, started, extras)


def prune(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    config: PruneConfig | None = None,
    *,
    calibration: Dataset | None = None,
    profile: TargetProfile | None = None,
    assignment: Assignment | None = None,
) -> PassResult:
    """Remove whole channels, heads and hidden units from a copy of ``module`` (left unchanged).

    ``config`` defaults to ``PruneConfig()``. ``example_inputs`` give the input shapes and dtypes (batch size 1 is fine). ``profile`` (default: the host
    profile) supplies ``channel_multiple`` when ``config.round_to`` is None; ``assignment`` (site -> channels
    kept) overrides sites of the config's plan. The result is a dense module of the same class (or a
    ``torch.fx.GraphModule`` when a channel count is a bare literal in a forward; ``extras["module_type"]``
    says so). Raises ``PassError`` naming the layer it cannot handle.

        >>> result = prune(model, (torch.zeros(1, 3, 32, 32),), PruneConfig(macs_ratio=0.5, round_to=8))
        >>> result.extras["macs_estimate_ratio"]   # about 0.5
    """
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile

    specs = tuple(
        InputSpec(f"input{i}", tuple(x.shape), str(x.dtype).removeprefix("torch."))
        for i, x in enumerate(example_inputs)
    )
    context = PassContext(input_specs=specs, profile=profile or get_profile("host"), calibration=calibration)
    prepared = prepare(module, config or PruneConfig(), context)
    return apply_assignment(prepared, assignment or {})


def _recalibrate(module: nn.Module, data: Dataset | None, batches: int) -> int:
    from repfx_deploy.passes.recovery import recalibrate_bn

    if data is None or len(data) == 0:
        if any(isinstance(m, _batchnorm()) for m in module.modules()):
            log.warning(
                "prune: no calibration data, so BatchNorm statistics were not re-calibrated (set [data] calibration)"
            )
        return 0
    return recalibrate_bn(module, data, batches=batches)


def _batchnorm() -> type:
    import torch.nn as nn

    return nn.modules.batchnorm._BatchNorm


def _layer_changes(before: nn.Module, after: nn.Module) -> list[dict[str, Any]]:
    """Per layer whose weight shrank: its weight shape before and after."""
    shapes = {n: tuple(p.shape) for n, p in after.named_parameters()}
    out = []
    for name, p in before.named_parameters():
        if name.endswith("weight") and name in shapes and shapes[name] != tuple(p.shape):
            out.append({"layer": name.removesuffix(".weight"), "before": list(p.shape), "after": list(shapes[name])})
    return out
