"""A recipe's passes as one search space: every pass's sites, prefixed by the pass, applied in order.

    chain = prepare_chain(module, recipe.passes, context)     # pass 1 prepared once; the defaults applied
    chain.space.defaults()          # {"prune/layer1.0.conv1": 16, ..., "quantize/fc": 8}
    run = chain.apply({"prune/layer1.0.conv1": 8})            # a PassRun, as run_passes gives

Pass ``i``'s space is that of the module the earlier passes make at their defaults (a quantize pass after a
prune pass sees the pruned layers). Each later pass is prepared on the module its upstream assignment makes,
and that preparation is kept for the next assignment with the same upstream choices (a search that varies only
the last pass prepares nothing again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.protocol import (
    Assignment,
    Choice,
    PassConfig,
    PassContext,
    PassResult,
    Prepared,
    SearchSpace,
)
from repfx_deploy.passes.registry import PassRun, _guarded, pass_for

if TYPE_CHECKING:
    import torch.nn as nn

# Preparations of later passes kept for upstream assignments seen before (each holds a model copy).
CACHE_SIZE = 4


def pass_prefixes(configs: Sequence[PassConfig]) -> tuple[str, ...]:
    """The prefix of each pass's sites: its kind, or ``kind.N`` (1-based) when the recipe has that kind twice."""
    kinds = [c.kind for c in configs]
    seen: dict[str, int] = {}
    out = []
    for kind in kinds:
        seen[kind] = seen.get(kind, 0) + 1
        out.append(kind if kinds.count(kind) == 1 else f"{kind}.{seen[kind]}")
    return tuple(out)


@dataclass(frozen=True)
class RecipeSpace:
    """Every pass's space, in recipe order; keys of an assignment are ``"<prefix>/<site>"``."""

    prefixes: tuple[str, ...]
    spaces: tuple[SearchSpace, ...]

    @property
    def size(self) -> int:
        size = 1
        for space in self.spaces:
            size *= space.size
        return size

    def keys(self) -> list[str]:
        return [f"{p}/{s.name}" for p, space in zip(self.prefixes, self.spaces) for s in space.sites]

    def defaults(self) -> dict[str, Choice]:
        return {
            f"{p}/{name}": c for p, space in zip(self.prefixes, self.spaces) for name, c in space.defaults().items()
        }

    def split(self, assignment: Assignment) -> list[dict[str, Choice]]:
        """The choices ``assignment`` gives each pass, by site, as given (not completed: a later pass's space
        depends on what the earlier passes made); ``RecipeError`` for a key that names no pass."""
        per: dict[str, dict[str, Choice]] = {p: {} for p in self.prefixes}
        for key, choice in assignment.items():
            prefix, _, site = key.partition("/")
            if prefix not in per or not site:
                raise RecipeError(
                    f"{key!r} names no site of the recipe's passes.",
                    f"Keys are <pass>/<site>, with <pass> one of {', '.join(self.prefixes)}.",
                )
            per[prefix][site] = choice
        return [per[p] for p in self.prefixes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "passes": [{"prefix": p, **space.to_dict()} for p, space in zip(self.prefixes, self.spaces)],
            "default": self.defaults(),
        }


def _apply_assignment(config: PassConfig, prepared: Prepared[Any], assignment: Assignment) -> PassResult:
    return _guarded(config, lambda p: p.apply_assignment(prepared, assignment))


class PreparedChain:
    """A recipe's passes prepared for many assignments (see the module docstring)."""

    def __init__(self, module: nn.Module, configs: Sequence[PassConfig], context: PassContext) -> None:
        if context.reference is None:
            context = replace(context, reference=module)
        self.module = module
        self.configs = tuple(configs)
        self.context = context
        self.prefixes = pass_prefixes(self.configs)
        self._cache: OrderedDict[tuple[int, tuple], Prepared[Any]] = OrderedDict()
        self._first: Prepared[Any] | None = None
        spaces = []
        current = module
        upstream: tuple = ()
        for index, config in enumerate(self.configs):
            prepared = self._prepared(index, upstream, current)
            spaces.append(prepared.space)
            if index + 1 < len(self.configs):  # only a later pass's space needs this pass's default result
                defaults = prepared.space.defaults()
                current = _apply_assignment(config, prepared, defaults).module
                upstream += (tuple(sorted(defaults.items())),)
        self.space = RecipeSpace(self.prefixes, tuple(spaces))

    def _prepared(self, index: int, upstream: tuple, module: nn.Module) -> Prepared[Any]:
        config = self.configs[index]
        if index == 0:
            if self._first is None:
                self._first = _guarded(config, lambda p: p.prepare(module, config, self.context))
            return self._first
        key = (index, upstream)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        prepared = _guarded(config, lambda p: p.prepare(module, config, self.context))
        self._cache[key] = prepared
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return prepared

    def apply(self, assignment: Assignment) -> PassRun:
        """Apply the passes with ``assignment`` (keys ``"<prefix>/<site>"``). A site left out takes its default
        in the space its pass has after the earlier passes' choices; the returned ``configs`` reproduce the run."""
        results, completed = [], []
        current = self.module
        upstream: tuple = ()
        for index, (config, given) in enumerate(zip(self.configs, self.space.split(assignment))):
            prepared = self._prepared(index, upstream, current)
            # sites left out take the defaults of the space this pass has here, after its upstream's choices
            chosen = prepared.space.complete(given)
            result = _apply_assignment(config, prepared, chosen)
            results.append(result)
            completed.append(chosen)
            current = result.module
            upstream += (tuple(sorted(chosen.items())),)
        configs = tuple(c.with_assignment(a) for c, a in zip(self.configs, completed))
        return PassRun(current, results, configs, self.context.input_specs)


def prepare_chain(module: nn.Module, configs: Sequence[PassConfig], context: PassContext) -> PreparedChain:
    """Prepare ``configs`` on ``module`` for many assignments; ``module`` is left unchanged."""
    for config in configs:
        pass_for(config)  # an unregistered config fails here, before any work
    return PreparedChain(module, configs, context)
