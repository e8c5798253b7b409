"""The recipe that reproduces a search's result: ``compress --recipe recipe.toml`` replays it to the same model.

    configs = finetune_configs(run.configs, steps=300)       # the chosen assignment's configs, plus the fine-tune
    text = reproducing_toml(recipe, configs)                 # the search's recipe with those passes

``PassRun.configs`` are the configs whose plain ``apply`` gives exactly what the chain's ``apply`` gave for the
chosen assignment (the pass protocol's contract), so the recipe with its passes replaced by them builds the same
model. The fine-tune of the result is a ``recover`` pass placed before the first quantize pass, so a quantized
result is calibrated on the fine-tuned float weights, the order a person writes by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repfx_deploy.passes.protocol import PassConfig
    from repfx_deploy.recipe import Recipe


def finetune_position(configs: Sequence[PassConfig]) -> int:
    """Where the fine-tune goes: before the first quantize pass, else at the end."""
    return next((i for i, c in enumerate(configs) if c.kind == "quantize"), len(configs))


def finetune_configs(configs: Sequence[PassConfig], *, steps: int, seed: int = 0) -> tuple[PassConfig, ...]:
    """``configs`` with the result's fine-tune: a recover pass of ``steps`` distillation steps (0: BatchNorm
    re-calibration only) at ``finetune_position``. A recover pass the recipe already has right there is the
    user's: it is kept and only given ``steps`` when it trains less than that."""
    from repfx_deploy.passes.recovery.handler import RecoverConfig

    out = list(configs)
    at = finetune_position(out)
    before = out[at - 1] if at > 0 else None
    if isinstance(before, RecoverConfig):
        # one that trains by epochs (finetune_steps 0, epochs > 0) already sets its own budget
        trains_by_steps_or_not_at_all = before.finetune is None or before.finetune_steps > 0
        if trains_by_steps_or_not_at_all and before.finetune_steps < steps:
            out[at - 1] = dataclasses.replace(before, finetune_steps=steps)
        return tuple(out)
    out.insert(at, RecoverConfig(finetune_epochs=0.0, finetune_steps=steps, seed=seed))
    return tuple(out)


def reproducing_recipe(recipe: Recipe, configs: Sequence[PassConfig]) -> Recipe:
    """``recipe`` with its passes replaced by ``configs`` (everything else, data and target included, kept)."""
    return dataclasses.replace(recipe, passes=tuple(configs))


def reproducing_toml(recipe: Recipe, configs: Sequence[PassConfig]) -> str:
    """The reproducing recipe as TOML, by the same code ``compress`` writes its own ``recipe.toml`` with."""
    from repfx_deploy.recipe import dump_recipe

    return dump_recipe(reproducing_recipe(recipe, configs))
