"""The pass registry: one ``Pass`` per config type, registered once, and the recipe's ``[[passes]]`` parsed into
configs.

    @register_pass
    class PrunePass(Pass[PruneConfig]):
        kind = "prune"
        config_type = PruneConfig
        ...

A second registration for the same config type or kind is refused. Built-in passes are imported only when a
recipe names their kind, so one pass's heavy dependencies never slow down the others (or ``--help``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes.protocol import Pass, PassConfig, PassContext, PassResult

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.analyze.torch_stats import ModelStats

log = logging.getLogger("repfx_deploy.passes")

# Where each built-in kind's pass lives; importing the module registers it.
BUILTIN_PASSES = {
    "prune": "repfx_deploy.passes.prune.handler",
    "quantize": "repfx_deploy.passes.quantize.handler",
    "lowrank": "repfx_deploy.passes.lowrank.handler",
    "slicegpt": "repfx_deploy.passes.slicegpt.handler",
    "tokens": "repfx_deploy.passes.tokens.handler",
    "snn": "repfx_deploy.passes.snn.handler",
    "recover": "repfx_deploy.passes.recovery.handler",
}
PASS_KINDS = tuple(BUILTIN_PASSES)

# Keys that belong to the recover pass; a recipe that still sets them inside a lossy pass is shown the new form.
RECOVER_KEYS = (
    "finetune_epochs",
    "finetune_steps",
    "lr",
    "batch_size",
    "augment",
    "temperature",
    "alpha",
    "optimizer",
    "weight_decay",
    "seed",
    "checkpoint",
    "bn_batches",
)

_BY_CONFIG: dict[type, Pass[Any]] = {}
_BY_KIND: dict[str, Pass[Any]] = {}

P = TypeVar("P", bound=type)
_T = TypeVar("_T")


def register_pass(cls: P) -> P:
    """Class decorator: register one instance of the ``Pass`` subclass ``cls`` for its ``config_type`` and
    ``kind``; a second registration of either is refused (``ValueError``)."""
    config_type, kind = cls.config_type, cls.kind  # type: ignore[attr-defined]
    if getattr(config_type, "kind", None) != kind:
        raise ValueError(f"{cls.__qualname__}: its config type {config_type.__qualname__} must have kind = {kind!r}")
    if config_type in _BY_CONFIG:
        raise ValueError(
            f"a pass for {config_type.__qualname__} is already registered ({type(_BY_CONFIG[config_type]).__qualname__})"
        )
    if kind in _BY_KIND:
        raise ValueError(f"a pass of kind {kind!r} is already registered ({type(_BY_KIND[kind]).__qualname__})")
    instance = cls()
    _BY_CONFIG[config_type] = instance
    _BY_KIND[kind] = instance
    return cls


def _load_builtin(kind: str) -> None:
    module = BUILTIN_PASSES.get(kind)
    if kind in _BY_KIND or module is None:
        return
    try:
        present = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its package is not there either
        present = False
    if present:
        importlib.import_module(module)


def registered_kinds() -> tuple[str, ...]:
    """Kinds that have a pass (built-in ones are imported to find out)."""
    for kind in BUILTIN_PASSES:
        _load_builtin(kind)
    return tuple(sorted(_BY_KIND))


def pass_for_kind(kind: str) -> Pass[Any]:
    """The pass of recipe kind ``kind``; ``RecipeError`` naming the kinds there are."""
    if not isinstance(kind, str) or kind not in PASS_KINDS:
        raise RecipeError(f"Unknown pass kind {kind!r}.", f"Use one of: {', '.join(PASS_KINDS)}.")
    _load_builtin(kind)
    if kind not in _BY_KIND:
        raise RecipeError(
            f"The pass kind {kind!r} is not available in this version of repfx-deploy.",
            f"Remove that [[passes]] entry (available: {', '.join(registered_kinds())}).",
        )
    return _BY_KIND[kind]


def pass_for(config: PassConfig) -> Pass[Any]:
    """The pass registered for ``type(config)``."""
    _load_builtin(getattr(config, "kind", ""))
    try:
        return _BY_CONFIG[type(config)]
    except KeyError:
        raise PassError(
            f"No pass is registered for the config type {type(config).__qualname__}.",
            "Register its Pass subclass with @register_pass.",
        ) from None


def parse_pass(entry: Any, index: int) -> PassConfig:
    """One ``[[passes]]`` table -> that kind's config; ``RecipeError`` naming ``passes[index].key``."""
    where = f"passes[{index}]"
    if not isinstance(entry, Mapping):
        raise RecipeError(
            f"{where} must be a table, got {type(entry).__name__} {entry!r}.",
            'Write each pass as a [[passes]] table with a kind, e.g. kind = "prune".',
        )
    if "kind" not in entry:
        raise RecipeError(
            f"{where} has no kind.", f'Give it one of: kind = "{PASS_KINDS[0]}", ... ({", ".join(PASS_KINDS)}).'
        )
    kind = entry["kind"]
    the_pass = pass_for_kind(kind)
    table = {k: v for k, v in entry.items() if k != "kind"}
    if kind != "recover":
        _refuse_inner_recovery(table, kind, the_pass.config_type, where)
    return the_pass.config_type.from_table(table, where)


def _refuse_inner_recovery(table: Mapping[str, Any], kind: str, config_type: type, where: str) -> None:
    """Fine-tuning is the recover pass's job; show a recipe that still sets it inside a pass the new form."""
    import dataclasses

    own = {f.name for f in dataclasses.fields(config_type)}
    moved = {k: v for k, v in table.items() if k in RECOVER_KEYS and k not in own}
    if not moved:
        return
    import tomli_w

    new_form = '[[passes]]\nkind = "recover"\n' + tomli_w.dumps(moved)
    raise RecipeError(
        f"{where} ({kind}) sets fine-tuning key(s) {sorted(moved)}; fine-tuning is now its own pass.",
        f"Move them into a recover pass right after it:\n{new_form}",
    )


def apply(module: nn.Module, config: PassConfig, context: PassContext) -> PassResult:
    """Apply one pass as its config says (``module`` is left unchanged)."""
    return _guarded(config, lambda p: p.apply(module, config, context))


def _guarded(config: PassConfig, run: Callable[[Pass[Any]], _T]) -> _T:
    """``run(the config's pass)``, with any failure but a recipe or pass error reported as the pass's failure."""
    the_pass = pass_for(config)
    try:
        return run(the_pass)
    except (RecipeError, PassError):
        raise
    except Exception as e:
        raise PassError(
            f"The {config.kind} pass failed: {type(e).__name__}: {e}", "Check the pass's keys in the recipe."
        ) from e


@dataclass(frozen=True)
class PassRun:
    """What ``run_passes`` returns: the final module, one result per pass (with the config that reproduces it),
    and, counted when first asked for, the final module's per-layer counts."""

    module: nn.Module
    results: list[PassResult]
    configs: tuple[PassConfig, ...]
    input_specs: tuple[Any, ...]

    @functools.cached_property
    def stats(self) -> ModelStats:
        from repfx_deploy.analyze.torch_stats import torch_stats

        return torch_stats(self.module, self.input_specs)

    @property
    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per pass: its result plus the resolved config."""
        from repfx_deploy.options import config_changes

        return [
            {**r.to_record(), "config": c.to_table(), "settings": config_changes(c)}
            for r, c in zip(self.results, self.configs)
        ]


def run_passes(module: nn.Module, configs: Sequence[PassConfig], context: PassContext) -> PassRun:
    """Apply ``configs`` in order, each to the previous one's output; ``module`` itself is left unchanged."""
    from dataclasses import replace

    if context.reference is None:
        context = replace(context, reference=module)
    results = []
    current = module
    for index, config in enumerate(configs):
        log.info("pass %d: %s", index, config.kind)
        result = apply(current, config, context)
        results.append(result)
        current = result.module
    return PassRun(current, results, tuple(configs), context.input_specs)
