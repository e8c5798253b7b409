"""From ratios (or a MACs target) to the set of channel classes kept.

Groups are the distinct sets of classes that make up one tensor's channels. A group inside another (the
channels of stage 1, which a zero-pad shortcut carries into stage 2; the branches a concatenation joins) is
decided first, and the larger group then only fills up to its own target with its remaining classes, so every
tensor width ends up ``(1 - ratio) * width`` rounded to ``round_to``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from repfx_deploy.passes.prune.channels import DependencyGraph, matches

if TYPE_CHECKING:
    from repfx_deploy.passes.prune.config import PruneConfig


@dataclass
class Group:
    name: str
    producers: tuple[str, ...]
    classes: tuple[int, ...]  # class roots, in channel order
    width: int  # channel positions in its narrowest tensor
    positions: dict[int, int] = field(default_factory=dict)  # class root -> positions in that tensor


@dataclass
class Plan:
    keep: dict[int, bool]
    ratio: float
    groups: list[dict]


def find_groups(graph: DependencyGraph) -> list[Group]:
    """The prunable groups, smallest first (nested groups before the ones containing them)."""
    find = graph.classes.find
    best: dict[frozenset, Group] = {}
    producers: dict[frozenset, list[str]] = {}
    for name, elems in graph.spaces:
        roots = [find(e) for e in elems]
        key = frozenset(roots)
        if name and name not in producers.setdefault(key, []):
            producers[key].append(name)
        if key in best and best[key].width <= len(elems):
            continue
        counts: dict[int, int] = {}
        for r in roots:
            counts[r] = counts.get(r, 0) + 1
        best[key] = Group(name, (), tuple(dict.fromkeys(roots)), len(elems), counts)
    groups = []
    for key, g in best.items():
        if all(graph.classes.pinned[r] for r in g.classes):
            continue
        g.producers = tuple(producers.get(key, ()))
        g.name = g.producers[0] if g.producers else g.name
        groups.append(g)
    groups.sort(key=lambda g: (len(g.classes), g.width))
    return groups


def make_plan(
    graph: DependencyGraph,
    groups: list[Group],
    scores: dict[int, float],
    *,
    ratio: float,
    layer_ratios: tuple[tuple[str, float], ...],
    round_to: int,
    max_ratio: float = 0.9,
    widths: Mapping[int, int] | None = None,
) -> Plan:
    """Decide every class: pinned ones stay; each group keeps its best classes up to its rounded target.
    ``widths`` (group index -> channels kept) overrides the target the ratios give for those groups."""
    keep: dict[int, bool] = {}
    find = graph.classes.find
    pair_of: dict[int, tuple[int, int]] = {}  # class root -> (pair index, side)
    for i, (front, back) in enumerate(graph.pairs):
        for side, elems in enumerate((front, back)):
            for e in elems:
                pair_of[find(e)] = (i, side)
    report = []
    for i, g in enumerate(groups):
        r = min(
            max_ratio, next((float(lr) for p, lr in layer_ratios if any(matches(n, (p,)) for n in g.producers)), ratio)
        )
        target = widths[i] if widths and i in widths else _rounded(g.width * (1.0 - r), g.width, round_to)
        kept = 0
        undecided = []
        for c in g.classes:
            if graph.classes.pinned[c]:
                keep[c] = True
            if c in keep:
                kept += g.positions[c] if keep[c] else 0
            else:
                undecided.append(c)
        need = target - kept
        for unit in _units(undecided, pair_of, scores):
            size = sum(g.positions[c] for c in unit)
            take = need >= size
            for c in unit:
                keep[c] = take
            if take:
                need -= size
        after = sum(g.positions[c] for c in g.classes if keep[c])
        report.append(
            {
                "group": g.name,
                "layers": list(g.producers),
                "channels_before": g.width,
                "channels_after": after,
                "ratio": round(r, 4),
            }
        )
    return Plan(keep, ratio, report)


def config_plan(
    graph: DependencyGraph,
    groups: list[Group],
    scores: dict[int, float],
    config: PruneConfig,
    round_to: int,
    *,
    fixed: Mapping[int, int],
    sites: Collection[int],
) -> Plan:
    """The plan ``config`` asks for. ``fixed`` (group index -> channels kept: the config's ``channels``) always
    holds; the other groups follow ``layer_ratios``, then ``ratio``, or the global ratio found by bisection to
    reach ``macs_ratio`` (then refined, leaving ``fixed`` and ``layer_ratios`` groups as they are). ``sites``:
    the groups a choice can change; when ``fixed`` covers them all, no search runs (nothing is left to search)."""

    def plan_for(ratio: float, widths: Mapping[int, int] | None = None) -> Plan:
        return make_plan(
            graph,
            groups,
            scores,
            ratio=ratio,
            layer_ratios=config.layer_ratios,
            round_to=round_to,
            max_ratio=config.max_ratio,
            widths={**(widths or {}), **fixed},
        )

    if config.macs_ratio is None or set(sites) <= set(fixed):
        return plan_for(config.ratio)
    plan = search_ratio(plan_for, graph, config.macs_ratio, config.max_ratio)
    if config.refine:
        by_ratio = {
            i
            for i, g in enumerate(groups)
            if any(matches(n, (p,)) for p, _ in config.layer_ratios for n in g.producers)
        }
        found = plan
        plan = refine_to_target(
            plan,
            lambda widths: plan_for(found.ratio, widths),
            graph,
            groups,
            scores,
            config.macs_ratio,
            round_to,
            frozen=frozenset(by_ratio | set(fixed)),
        )
    return plan


def _rounded(channels: float, width: int, round_to: int) -> int:
    """``channels`` rounded to a multiple of ``round_to``, at least one multiple, at most ``width``. A group no
    wider than one multiple is kept whole: any cut would leave it off the vector width."""
    if width <= round_to:
        return width
    return min(width, max(round_to, round(channels / round_to) * round_to))


def _units(
    undecided: list[int], pair_of: dict[int, tuple[int, int]], scores: dict[int, float]
) -> list[tuple[int, ...]]:
    """Undecided classes as selection units, best first. Classes of a symmetric pad are paired front-to-back
    (best front with best back), so both sides keep the same count."""
    singles: list[tuple[int, ...]] = [(c,) for c in undecided if c not in pair_of]
    sides: dict[int, list[list[int]]] = {}
    for c in undecided:
        if c in pair_of:
            i, side = pair_of[c]
            sides.setdefault(i, [[], []])[side].append(c)
    paired: list[tuple[int, ...]] = []
    for front, back in sides.values():
        front.sort(key=lambda c: -scores.get(c, 0.0))
        back.sort(key=lambda c: -scores.get(c, 0.0))
        paired += list(zip(front, back))
        paired += [(c,) for c in front[len(back) :] + back[len(front) :]]
    units = singles + paired
    units.sort(key=lambda u: -sum(scores.get(c, 0.0) for c in u) / len(u))
    return units


def estimate_macs(graph: DependencyGraph, keep: dict[int, bool] | None) -> int:
    """MACs of the convs, linears and attention layers with only the kept classes (all with ``keep=None``).
    An estimate used to steer the search; the reported MACs are counted on the pruned module."""
    find = graph.classes.find

    def n(elems) -> int:
        return len(elems) if keep is None else sum(1 for e in elems if keep.get(find(e), True))

    total = 0
    for m in graph.macs:
        if m["kind"] == "attention":
            inner = n(m["heads"])
            total += m["rows"] * (m["qkv"] * n(m["in"]) * inner + 2 * m["attn_tokens"] * inner)
        elif m["kind"] == "conv-depthwise":
            total += m["rows"] * m["kernel"] * n(m["out"])
        elif m["kind"] == "linear":
            total += m["rows"] * n(m["in"]) * n(m["out"])
        else:
            total += m["rows"] * m["kernel"] * n(m["in"]) * n(m["out"])
    return total


def search_ratio(
    plan_for: Callable[[float], Plan],
    graph: DependencyGraph,
    macs_ratio: float,
    max_ratio: float,
    *,
    iterations: int = 20,
) -> Plan:
    """The smallest global ratio whose plan keeps at most ``macs_ratio`` of the (estimated) MACs, by bisection
    (MACs fall in steps as widths cross ``round_to`` multiples, so the result is the first step below target).
    ``plan_for(ratio) -> Plan``. When even ``max_ratio`` cannot reach the target, its plan is returned."""
    full = estimate_macs(graph, None) or 1
    lo, hi = 0.0, max_ratio
    best = plan_for(hi)
    if estimate_macs(graph, best.keep) / full > macs_ratio:
        return best
    for _ in range(iterations):
        mid = (lo + hi) / 2
        plan = plan_for(mid)
        if estimate_macs(graph, plan.keep) / full <= macs_ratio:
            hi, best = mid, plan
        else:
            lo = mid
    return best


def refine_to_target(
    plan: Plan,
    plan_with: Callable[[dict[int, int]], Plan],
    graph: DependencyGraph,
    groups: list[Group],
    scores: dict[int, float],
    macs_ratio: float,
    round_to: int,
    *,
    frozen: frozenset[int] = frozenset(),
    max_steps: int = 256,
) -> Plan:
    """Give channels back, ``round_to`` at a time, while the MACs stay at most ``macs_ratio``.

    A uniform ratio lands on the first MACs step below the target, which on narrow networks can be far below it
    (ResNet-56 at round_to 8: 0.455 for a 0.5 target). Each step restores the group whose next block of pruned
    channels carries the most importance per MAC it costs. ``plan_with(widths) -> Plan`` re-plans with per-group
    widths (group index -> channels); groups in ``frozen`` (set by ``layer_ratios``) are left as they are.
    """
    full = estimate_macs(graph, None) or 1
    budget = macs_ratio * full
    widths = {i: rep["channels_after"] for i, rep in enumerate(plan.groups)}
    macs = estimate_macs(graph, plan.keep)
    for _ in range(max_steps):
        best = None
        for i, g in enumerate(groups):
            if i in frozen or widths[i] >= g.width:
                continue
            trial = dict(widths)
            trial[i] = min(g.width, widths[i] + round_to)
            candidate = plan_with(trial)
            trial_macs = estimate_macs(graph, candidate.keep)
            if trial_macs > budget or trial_macs <= macs:
                continue
            gained = sum(scores.get(c, 0.0) for c, k in candidate.keep.items() if k and not plan.keep.get(c, True))
            value = gained / (trial_macs - macs)
            if best is None or value > best[0]:
                best = (value, trial, candidate, trial_macs)
        if best is None:
            break
        _, widths, plan, macs = best
    return plan
