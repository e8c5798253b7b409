"""The recipe's tokens pass: option validation and one run through the registered handler."""

from __future__ import annotations

import pytest
import torch
import vit_zoo

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.registry import PassContext, apply_passes, get_handler
from repfx_deploy.passes.tokens.handler import parse_options, tokens_handler
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 16, 16)),)


def test_tokens_kind_is_registered():
    assert get_handler("tokens") is tokens_handler


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"flops_reduction": 0.3, "methd": "merge"}, "methd"),
        ({"method": "prune-all", "flops_reduction": 0.3}, "method"),
        ({"flops_reduction": 35}, "flops_reduction"),
        ({}, "exactly one of flops_reduction"),
        ({"flops_reduction": 0.3, "keep": [10, 5]}, "exactly one"),
        ({"keep": 10}, "keep must be a list"),
        ({"keep": [5, 9]}, "must not grow"),
        ({"flops_reduction": 0.3, "head_aggregation": "max"}, "head_aggregation"),
    ],
)
def test_bad_options_raise_recipe_error(options, match):
    with pytest.raises(RecipeError, match=match):
        parse_options(options)


def test_recipe_pass_reduces_tokens_and_reports_stats():
    torch.manual_seed(0)
    model = vit_zoo.TimmStyleViT().eval()
    out, records = apply_passes(model, (("tokens", {"method": "merge", "keep": [13, 9, 1]}),), PassContext(input_specs=SPECS))
    stats = records[0]["stats"]
    assert stats["keep"] == [13, 9, 1] and stats["method"] == "merge" and stats["cls_only_last"]
    assert stats["macs_after"] < stats["macs_before"]
    assert out(torch.zeros(1, 3, 16, 16)).shape == (1, 5)
