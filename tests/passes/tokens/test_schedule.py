"""Keep schedules: explicit counts checked, FLOPs presets reached within the stated tolerance."""

from __future__ import annotations

import pytest
import torch
import vit_zoo

from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes.tokens import TokensConfig
from repfx_deploy.passes.tokens.schedule import check_keep, keep_counts, round_count
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 16, 16)),)


def test_keep_counts_spreads_fractional_constant_step():
    assert keep_counts(65, 6, (0, 1, 2, 3), 2.5, "constant", "zero-tprune", cls_only_last=False) == (
        62,
        60,
        57,
        55,
        55,
        55,
    )
    assert keep_counts(65, 6, (0, 1, 2, 3, 4), 7.0, "constant", "merge", cls_only_last=True)[-1] == 1


def test_keep_counts_caps_merge_at_half_the_patches():
    assert keep_counts(17, 2, (0, 1), 12.0, "constant", "merge", cls_only_last=False) == (9, 5)


@pytest.mark.parametrize(
    ("keep", "match"),
    [
        ((18, 17), "block 0 keeps 18 tokens but receives only 17"),
        ((1, 1), "block 0 keeps 1 token .*only in the last block \\(block 1\\)"),
        ((5, 5), "block 0 cannot go from the 17 it receives to 5 .*at most 8 removed"),
        ((9, 12), "block 1 keeps 12 tokens but block 0 before it keeps only 9"),
        ((13, 5), "block 1 cannot go from block 0's 13 to 5"),
    ],
)
def test_check_keep_refuses_infeasible_schedule(keep, match):
    with pytest.raises(ValueError, match=match):
        check_keep(keep, 17, "merge")


def test_check_keep_names_blocks_when_given():
    with pytest.raises(ValueError, match="b\\.1 keeps 12 tokens but b\\.0 before it keeps only 9"):
        check_keep((9, 12), 17, "merge", ("b.0", "b.1"))


@pytest.mark.parametrize("method", ["zero-tprune", "merge"])
@pytest.mark.parametrize("target", [0.2, 0.35])
def test_flops_preset_lands_within_tolerance(method, target, apply_tokens):
    torch.manual_seed(0)
    config = TokensConfig(method=method, flops_reduction=target, schedule="ratio" if target == 0.35 else "constant")
    result = apply_tokens(vit_zoo.TimmStyleViT(depth=4).eval(), config, SPECS)
    assert abs(result.extras["flops_reduction"] - target) <= config.tolerance
    assert result.macs_after < result.macs_before
    assert result.extras["keep"][-1] == 1  # class-token head: the last block computes the class token alone


def test_mean_pool_model_keeps_all_tokens_in_last_block(apply_tokens):
    extras = apply_tokens(vit_zoo.MeanPoolTimmViT().eval(), TokensConfig(flops_reduction=0.2), SPECS).extras
    assert not extras["cls_only_last"] and extras["keep"][-1] > 1


def test_unreachable_target_error_names_closest(apply_tokens):
    config = TokensConfig(flops_reduction=0.9, layers=(1,), cls_only_last="off")
    with pytest.raises(PassError, match="not reachable.*closest"):
        apply_tokens(vit_zoo.TimmStyleViT().eval(), config, SPECS)


def test_layers_out_of_range_raise_recipe_error_naming_them(apply_tokens):
    with pytest.raises(RecipeError, match=r"layers names block\(s\) \[3\], but the model has 3 blocks"):
        apply_tokens(vit_zoo.TimmStyleViT().eval(), TokensConfig(flops_reduction=0.2, layers=(0, 3)), SPECS)


def test_explicit_keep_of_wrong_length_names_blocks(apply_tokens):
    with pytest.raises(RecipeError, match=r"3 transformer blocks \(blocks\.0, blocks\.1, blocks\.2\)"):
        apply_tokens(vit_zoo.TimmStyleViT().eval(), TokensConfig(keep=(10, 5)), SPECS)


def test_round_count_takes_nearest_multiple_one_block_can_reach():
    assert round_count(49, 65, 16, "zero-tprune") == 48
    assert round_count(41, 65, 16, "zero-tprune") == 48
    assert round_count(30, 65, 16, "merge") == 48  # merging removes at most 32 of 64 patches: 32 tokens is out of reach
    assert round_count(49, 65, 1, "zero-tprune") == 49


def test_keep_counts_rounds_reduced_counts_to_multiple():
    keep = keep_counts(65, 6, (1, 3), 15.0, "constant", "zero-tprune", cls_only_last=True, multiple=16)
    assert keep == (65, 48, 48, 32, 32, 1)


def test_explicit_keep_not_rounded_to_token_multiple(apply_tokens):
    result = apply_tokens(vit_zoo.TimmStyleViT().eval(), TokensConfig(keep=(13, 9, 1), token_multiple=8), SPECS)
    assert result.extras["keep"] == [13, 9, 1]


def test_flops_preset_with_token_multiple_keeps_multiples(apply_tokens):
    torch.manual_seed(0)
    config = TokensConfig(flops_reduction=0.35, token_multiple=4, tolerance=0.05)
    keep = apply_tokens(vit_zoo.TimmStyleViT(depth=4).eval(), config, SPECS).extras["keep"]
    assert all(k % 4 == 0 for k in keep if k not in (17, 1)), keep
