"""One parser for the recovery keys every pass shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.recovery.options import parse_recovery


def test_parse_recovery_gives_no_finetuning_without_budget():
    opts = parse_recovery({}, "prune")
    assert opts.finetune is None and opts.bn_recalibrate is True and opts.bn_batches == 32


def test_parse_recovery_builds_finetune_config_with_overrides_under_recipe():
    opts = parse_recovery({"finetune_steps": 10, "lr": 0.05, "checkpoint": "ft.ckpt"}, "lowrank", overrides={"lr": 1e-3, "alpha": 0.5})
    ft = opts.finetune
    assert ft.steps == 10 and ft.lr == 0.05 and ft.alpha == 0.5 and ft.checkpoint == Path("ft.ckpt")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"lr": 0.1}, "no fine-tuning budget"),
        ({"finetune_epochs": 1, "augment": "rotate"}, "augment"),
        ({"bn_batches": 0}, "bn_batches"),
        ({"bn_recalibrate": "yes"}, "bn_recalibrate"),
        ({"finetune_steps": "many"}, "many"),
    ],
)
def test_parse_recovery_refuses_bad_options_naming_them(options, needle):
    with pytest.raises(RecipeError) as err:
        parse_recovery(options, "prune")
    assert needle in str(err.value) and "prune" in str(err.value)
