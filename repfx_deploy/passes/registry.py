"""The pass registry: one handler per recipe ``kind``, registered once.

A handler is ``handler(module, options, context) -> PassResult``; ``options`` is the recipe table of that
pass without ``kind``. Handlers validate their options into their own frozen config and raise ``RecipeError``
for unknown keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import PassError, RecipeError

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.analyze.torch_stats import ModelStats
    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.spec import InputSpec

log = logging.getLogger("repfx_deploy.passes")

# Every kind a recipe may name. A kind without a registered handler is planned but not built yet.
PASS_KINDS = ("prune", "quantize", "lowrank", "slicegpt", "tokens", "snn")

# Where each built-in kind's handler lives. It is imported only when a recipe names that kind, so a pass's
# heavy dependencies never slow down the others (or ``--help``). The module registers itself on import.
BUILTIN_HANDLERS = {
    "prune": "repfx_deploy.passes.prune.handler",
    "quantize": "repfx_deploy.passes.quantize.handler",
    "lowrank": "repfx_deploy.passes.lowrank.handler",
    "slicegpt": "repfx_deploy.passes.slicegpt.handler",
    "tokens": "repfx_deploy.passes.tokens.handler",
    "snn": "repfx_deploy.passes.snn.handler",
}


@dataclass
class PassContext:
    """What a pass may use besides the module: the input signature and the data the user gave."""

    input_specs: tuple["InputSpec", ...]
    calibration: "Dataset | None" = None
    train: "Dataset | None" = None
    target_name: str = "host"
    # True when the caller exports the result and checks that artifact itself (compress does): a pass then skips
    # its own scratch export, whose settings could differ from the artifact's
    artifact_checks: bool = False


@dataclass
class PassResult:
    """The transformed module and what the pass did (JSON-ready stats for the report)."""

    module: "nn.Module"
    stats: dict[str, Any] = field(default_factory=dict)


Handler = Callable[["nn.Module", Mapping[str, Any], PassContext], PassResult]
_HANDLERS: dict[str, Handler] = {}


def register_pass(kind: str) -> Callable[[Handler], Handler]:
    """Decorator registering ``handler`` for recipe ``kind``; a second registration for a kind is refused."""
    if kind not in PASS_KINDS:
        raise ValueError(f"unknown pass kind {kind!r}; add it to PASS_KINDS first")

    def decorate(handler: Handler) -> Handler:
        if kind in _HANDLERS:
            raise ValueError(f"a handler for pass kind {kind!r} is already registered ({_HANDLERS[kind].__qualname__})")
        _HANDLERS[kind] = handler
        return handler

    return decorate


def _load_builtin(kind: str) -> None:
    """Import the built-in handler module for ``kind`` if it exists (a kind not built yet has none)."""
    import importlib
    import importlib.util

    module = BUILTIN_HANDLERS.get(kind)
    if kind in _HANDLERS or module is None:
        return
    try:
        present = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its package does not exist yet
        present = False
    if present:
        importlib.import_module(module)


def registered_kinds() -> tuple[str, ...]:
    """Kinds that have a handler (built-in handlers are imported to find out)."""
    for kind in BUILTIN_HANDLERS:
        _load_builtin(kind)
    return tuple(sorted(_HANDLERS))


def get_handler(kind: str) -> Handler:
    """The handler for ``kind``; ``RecipeError`` when the kind is unknown or not built."""
    check_pass_kind(kind)
    return _HANDLERS[kind]


def check_pass_kind(kind: str) -> None:
    """Raise ``RecipeError`` for a kind that is unknown or has no handler yet, naming what is available."""
    if kind not in PASS_KINDS:
        raise RecipeError(f"Unknown pass kind {kind!r}.", f"Use one of: {', '.join(PASS_KINDS)}.")
    _load_builtin(kind)
    if kind not in _HANDLERS:
        available = ", ".join(registered_kinds()) or "none yet"
        raise RecipeError(
            f"The pass kind {kind!r} is not available in this version of repfx-deploy (available: {available}).",
            "Remove that [[passes]] entry from the recipe.",
        )


def apply_passes(module: "nn.Module", passes: tuple[tuple[str, Mapping[str, Any]], ...], context: PassContext) -> tuple["nn.Module", list[dict]]:
    """Run ``passes`` (``(kind, options)`` pairs) in order; returns the final module and one stats dict per pass
    (see ``run_passes``)."""
    run = run_passes(module, passes, context)
    return run.module, run.records


@dataclass(frozen=True)
class PassRun:
    """What ``run_passes`` returns: the final module, one record per pass, and the final module's counts."""

    module: "nn.Module"
    records: list[dict]
    stats: "ModelStats"  # of ``module``


def run_passes(module: "nn.Module", passes: tuple[tuple[str, Mapping[str, Any]], ...], context: PassContext, before: "ModelStats | None" = None) -> PassRun:
    """Run ``passes`` in order. Each pass's stats get its MACs and parameters before and after (``macs_before``,
    ``macs_after``, ``macs_kept``, ``params_before``, ``params_after``, ``params_kept``), counted here so that no
    pass has to. ``before``: the input module's ``ModelStats`` when the caller has already counted them."""
    from repfx_deploy.analyze.torch_stats import torch_stats

    records = []
    if before is None:
        before = torch_stats(module, context.input_specs)
    for index, (kind, options) in enumerate(passes):
        handler = get_handler(kind)
        log.info("pass %d: %s", index, kind)
        try:
            result = handler(module, options, context)
        except (RecipeError, PassError):
            raise
        except Exception as e:
            raise PassError(f"The {kind} pass failed: {type(e).__name__}: {e}", "Check the pass options in the recipe.") from e
        module = result.module
        after = torch_stats(module, context.input_specs)
        result.stats.update({
            "macs_before": before.macs, "macs_after": after.macs, "macs_kept": round(after.macs / max(before.macs, 1), 4),
            "params_before": before.params, "params_after": after.params, "params_kept": round(after.params / max(before.params, 1), 4),
        })
        records.append({"kind": kind, "options": dict(options), "stats": result.stats})
        before = after
    return PassRun(module, records, before)
