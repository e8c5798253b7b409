"""The prune pass's sites: one per group of coupled channels that a choice can change, named by the layer that
produces it (the name the report's ``groups`` use), with choices in channels kept.

A group is a site when it has channels of its own to decide: channels that are not pinned (model inputs and
outputs, ignored layers) and not already decided by a smaller group inside it (a concatenation of branches has
none of its own; a zero-pad shortcut's group has its pad channels). A choice is the width the group's tensor
keeps: a group that contains another group's channels keeps at least what that one kept, and at most that plus
its own channels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.protocol import SearchSpace, Site, kept_choices
from repfx_deploy.passes.prune.channels import DependencyGraph
from repfx_deploy.passes.prune.plan import Group, Plan

# choices per site: enough to search, few enough that a space of 50 sites stays tractable for a search
STEPS = 12


@dataclass(frozen=True)
class SiteGroup:
    """A site's name, its group (index into the groups), and the step its choices take."""

    name: str
    group: int
    width: int
    step: int


def site_groups(
    graph: DependencyGraph, groups: Sequence[Group], round_to: int, order: Sequence[str] = ()
) -> list[SiteGroup]:
    """The sites, in the model's module order (``order``: module names as ``named_modules`` lists them).

    A site's step is ``round_to``, made a multiple of the channels its classes move together (a head's
    ``head_dim``, a grouped conv's group), so every choice is a width the plan can reach."""
    seen: set[int] = set()
    found: list[SiteGroup] = []
    used: set[str] = set()
    for i, g in enumerate(groups):
        own = [c for c in g.classes if c not in seen and not graph.classes.pinned[c]]
        seen.update(g.classes)
        if not own:
            continue
        unit = math.gcd(*(g.positions[c] for c in own))
        name, k = g.name, 2
        while name in used:  # a layer that produces two groups (called twice): both stay addressable
            name, k = f"{g.name}#{k}", k + 1
        used.add(name)
        found.append(SiteGroup(name, i, g.width, math.lcm(round_to, unit)))
    rank = {n: k for k, n in enumerate(order)}
    found.sort(key=lambda s: (rank.get(s.name.split("#")[0], len(rank)), s.group))
    return found


def fixed_widths(sites: Sequence[SiteGroup], groups: Sequence[Group], channels: Mapping[str, int]) -> dict[int, int]:
    """The config's ``channels`` as group index -> channels kept; ``RecipeError`` naming an unknown site (and the
    site a layer belongs to, when it is one of a group's other producers) or a count wider than the group."""
    by_name = {s.name: s for s in sites}
    out: dict[int, int] = {}
    for name, kept in channels.items():
        site = by_name.get(name)
        if site is None:
            owner = next((s.name for s in sites if name in groups[s.group].producers), None)
            hint = (
                f"{name!r} shares its channels with site {owner!r}: set that one."
                if owner
                else (f"Sites of this model: {', '.join(list(by_name)[:12])}{' ...' if len(by_name) > 12 else ''}.")
            )
            raise RecipeError(f"prune: channels names {name!r}, which is not a prunable site of this model.", hint)
        if kept > site.width:
            raise RecipeError(
                f"prune: channels sets {name!r} to {kept}, but it has only {site.width} channels.",
                f"Use at most {site.width}.",
            )
        out[site.group] = kept
    return out


def build_space(sites: Sequence[SiteGroup], plan: Plan, max_ratio: float) -> SearchSpace:
    """The space: per site, ``kept_choices`` from the fewest channels ``max_ratio`` allows to all of them, in
    steps of the site's step, thinned to about ``STEPS``; the default is what ``plan`` keeps (added as a choice
    when it is not one, so the default assignment reproduces the config exactly); unchanged is the full width."""
    out = []
    for s in sites:
        default = plan.groups[s.group]["channels_after"]
        minimum = math.ceil(s.width * (1.0 - max_ratio) - 1e-9)
        choices = sorted(set(kept_choices(s.width, s.step, minimum=minimum, steps=STEPS)) | {default})
        out.append(Site(s.name, "channels_kept", tuple(choices), default, unchanged=s.width))
    return SearchSpace("prune", tuple(out))
