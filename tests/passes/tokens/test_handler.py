"""The recipe's tokens pass: keys parsed by the generic parser (errors name passes[0].key), one run through the
registry, the config's table round trip."""

from __future__ import annotations

import pytest
import torch
import vit_zoo
from protocol_checks import make_context

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.registry import parse_pass, pass_for_kind, run_passes
from repfx_deploy.passes.tokens import TokensConfig
from repfx_deploy.passes.tokens.handler import TokensPass
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 16, 16)),)


def _parse(**table):
    return parse_pass({"kind": "tokens", **table}, 0)


def test_tokens_kind_is_registered_for_its_config():
    assert isinstance(pass_for_kind("tokens"), TokensPass) and TokensPass.config_type is TokensConfig


def test_unknown_key_raises_recipe_error_naming_key_path():
    with pytest.raises(RecipeError, match=r"Unknown key\(s\) 'methd' in passes\[0\]"):
        _parse(flops_reduction=0.3, methd="merge")


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"keep": 10}, r"passes\[0\]\.keep must be a table of string = an integer or a list, each an integer"),
        ({"keep": ["a", "b"]}, r"passes\[0\]\.keep must be"),
        ({"flops_reduction": "35%"}, r"passes\[0\]\.flops_reduction must be a finite number"),
        ({"flops_reduction": 0.3, "method": "prune-all"}, r"passes\[0\]\.method must be one of 'zero-tprune', 'merge'"),
        ({"flops_reduction": 0.3, "layers": 2}, r"passes\[0\]\.layers must be a list, each an integer"),
        ({"flops_reduction": 0.3, "token_multiple": 1.5}, r"passes\[0\]\.token_multiple must be an integer"),
        ({"flops_reduction": 0.3, "head_aggregation": "max"}, r"passes\[0\]\.head_aggregation must be one of"),
        (
            {"flops_reduction": 0.3, "cls_only_last": True},
            r"passes\[0\]\.cls_only_last must be one of 'auto', 'on', 'off'",
        ),
    ],
)
def test_wrong_type_raises_recipe_error_naming_key_path(table, match):
    with pytest.raises(RecipeError, match=match):
        _parse(**table)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"flops_reduction": 35}, "flops_reduction is the fraction of MACs removed, in \\(0, 1\\)"),
        ({}, "exactly one of flops_reduction"),
        ({"flops_reduction": 0.3, "keep": [10, 5]}, "exactly one"),
        ({"keep": [5, 9]}, "must not grow"),
        ({"keep": [5, 0]}, "positive token count"),
        ({"keep": {"blocks.0": 0}}, "positive token count"),
        ({"keep": []}, "empty"),
        ({"flops_reduction": 0.3, "token_multiple": 0}, "token_multiple must be an integer in \\[1, 64\\]"),
        ({"flops_reduction": 0.3, "tolerance": 0.6}, "tolerance"),
        ({"flops_reduction": 0.3, "candidate_factor": 9.0}, "candidate_factor must be in \\[1, 8\\]"),
    ],
)
def test_out_of_range_value_raises_recipe_error_at_passes_0(table, match):
    with pytest.raises(RecipeError, match=r"passes\[0\]: .*" + match):
        _parse(**table)


def test_finetune_key_in_tokens_pass_shows_recover_form():
    with pytest.raises(RecipeError, match="fine-tuning is now its own pass") as e:
        _parse(flops_reduction=0.3, finetune_epochs=1)
    assert 'kind = "recover"' in e.value.fix


@pytest.mark.parametrize(
    "table",
    [
        {"flops_reduction": 0.3, "method": "merge", "layers": [0, 2], "token_multiple": 8, "schedule": "ratio"},
        {"keep": [13, 9, 1], "reduction": "drop", "pagerank_start": "cls"},
        {"keep": {"blocks.1": 9, "blocks.2": 1}, "token_multiple": 1},
    ],
)
def test_config_round_trips_through_its_table(table):
    config = _parse(**table)
    assert parse_pass({"kind": "tokens", **config.to_table()}, 0) == config


def test_keep_table_parsed_by_block_name():
    config = _parse(keep={"blocks.1": 9, "blocks.2": 1})
    assert config.keep == (("blocks.1", 9), ("blocks.2", 1)) and config.keep_by_name == {"blocks.1": 9, "blocks.2": 1}


def test_recipe_pass_reduces_tokens_and_reports_extras():
    torch.manual_seed(0)
    model = vit_zoo.TimmStyleViT().eval()
    run = run_passes(model, [_parse(method="merge", keep=[13, 9, 1])], make_context(SPECS))
    result = run.results[0]
    assert result.kind == "tokens" and result.decisions == {"blocks.0": 13, "blocks.1": 9, "blocks.2": 1}
    assert result.extras["keep"] == [13, 9, 1] and result.extras["method"] == "merge" and result.extras["cls_only_last"]
    assert result.macs_after < result.macs_before
    assert run.records[0]["config"]["keep"] == [13, 9, 1]
    assert run.module(torch.zeros(1, 3, 16, 16)).shape == (1, 5)
