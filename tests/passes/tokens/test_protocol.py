"""The tokens pass speaks the pass protocol: contracts (check_protocol), its space on a known tiny ViT, counts
that grow along depth refused naming both blocks, and a target profile read from a file."""

from __future__ import annotations

import pytest
import torch
import vit_zoo
from protocol_checks import check_protocol, make_context

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.registry import pass_for
from repfx_deploy.passes.tokens import TokensConfig
from repfx_deploy.passes.tokens.schedule import check_keep, site_choices
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import load_profile_file

SPECS = (InputSpec("input", (1, 3, 16, 16)),)
INPUTS = (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)),)
BLOCKS = ("blocks.0", "blocks.1", "blocks.2")


def _timm(depth: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return vit_zoo.TimmStyleViT(depth=depth).eval()


def _profile(tmp_path, multiple: int):
    path = tmp_path / "board.toml"
    path.write_text(
        f'name = "board"\ndescription = "a test board"\nchannel_multiple = {multiple}\n[tvm_target]\nkind = "llvm"\n'
    )
    return load_profile_file(path)


def _prepare(model, config, profile=None):
    context = make_context(SPECS, profile=profile)
    return pass_for(config).prepare(model, config, context)


@pytest.mark.parametrize(
    ("config", "other"),
    [
        (TokensConfig(flops_reduction=0.3), None),
        (TokensConfig(flops_reduction=0.3, method="merge", token_multiple=4, schedule="ratio"), None),
        (
            TokensConfig(keep=(13, 9, 1), reduction="drop", pagerank_iterations=1),
            {"blocks.0": 16, "blocks.1": 8, "blocks.2": 4},
        ),
        (TokensConfig(keep=(("blocks.1", 9),), cls_only_last="off"), {"blocks.0": 16, "blocks.2": 4}),
    ],
)
def test_protocol_contracts_hold_on_timm_vit(config, other, tmp_path):
    default, moved = check_protocol(_timm(), config, make_context(SPECS, profile=_profile(tmp_path, 4)), INPUTS, other)
    assert default.macs_after < default.macs_before and moved.extras["keep"] == [moved.decisions[b] for b in BLOCKS]


def test_protocol_contracts_hold_on_post_norm_torch_vit():
    torch.manual_seed(0)
    check_protocol(
        vit_zoo.PostNormTorchViT().eval(),
        TokensConfig(keep=(13, 9, 1), method="merge"),
        make_context(SPECS),
        INPUTS,
        {"encoder.layers.0": 16, "encoder.layers.1": 16, "encoder.layers.2": 1},
    )


def test_space_sites_and_choices_from_profile_file_when_channel_multiple_is_4(tmp_path):
    space = _prepare(_timm(), TokensConfig(keep=(13, 9, 1)), _profile(tmp_path, 4)).space
    assert [s.name for s in space.sites] == list(BLOCKS) and {s.knob for s in space.sites} == {"tokens_kept"}
    assert [s.choices for s in space.sites] == [(4, 8, 12, 13, 16, 17), (4, 8, 9, 12, 16, 17), (1, 4, 8, 12, 16, 17)]
    assert space.defaults() == {"blocks.0": 13, "blocks.1": 9, "blocks.2": 1}
    assert {s.unchanged for s in space.sites} == {17} and space.size == 6 * 6 * 6


def test_pass_runs_with_profile_from_file(tmp_path):
    profile = _profile(tmp_path, 4)
    config = TokensConfig(flops_reduction=0.3)
    prepared = _prepare(_timm(), config, profile)
    assert prepared.context.profile is profile
    result = pass_for(config).apply_assignment(prepared, {"blocks.0": 12, "blocks.1": 8, "blocks.2": 1})
    assert result.extras["keep"] == [12, 8, 1] and result.macs_after < result.macs_before


def test_space_choices_use_token_multiple_when_set(tmp_path):
    space = _prepare(_timm(), TokensConfig(keep=(13, 9, 1), token_multiple=8), _profile(tmp_path, 4)).space
    assert [s.choices for s in space.sites] == [(8, 13, 16, 17), (8, 9, 16, 17), (1, 8, 16, 17)]


def test_space_choices_on_host_profile_are_multiples_of_16_plus_default_and_full():
    space = _prepare(_timm(), TokensConfig(keep=(13, 9, 1), method="merge")).space
    assert [s.choices for s in space.sites] == [(13, 16, 17), (9, 16, 17), (1, 16, 17)]


def test_space_default_is_searched_schedule_when_flops_reduction_given():
    model, config = _timm(), TokensConfig(flops_reduction=0.3)
    prepared = _prepare(model, config)
    plain = pass_for(config).apply(model, config, make_context(SPECS))
    assert tuple(prepared.space.defaults().values()) == prepared.default_keep == tuple(plain.extras["keep"])
    assert prepared.searched_reduction == pytest.approx(plain.extras["flops_reduction"], abs=1e-4)


@pytest.mark.parametrize(
    ("model", "config"),
    [
        (vit_zoo.MeanPoolTimmViT, TokensConfig(keep=(13, 9, 5))),
        (vit_zoo.TimmStyleViT, TokensConfig(keep=(13, 9, 5), cls_only_last="off")),
    ],
)
def test_last_site_offers_no_class_token_alone_when_model_reads_every_token_or_off(model, config):
    torch.manual_seed(0)
    assert 1 not in _prepare(model().eval(), config).space.sites[-1].choices


def test_count_growing_along_depth_raises_recipe_error_naming_both_blocks():
    config = TokensConfig(keep=(13, 9, 1))
    prepared = _prepare(_timm(), config)
    with pytest.raises(RecipeError, match="blocks.1 keeps 16 tokens but blocks.0 before it keeps only 13"):
        pass_for(config).apply_assignment(prepared, {"blocks.1": 16})


def test_merge_removing_more_than_half_raises_recipe_error_naming_both_blocks(tmp_path):
    config = TokensConfig(keep=(13, 9, 1), method="merge")
    prepared = _prepare(_timm(), config, _profile(tmp_path, 4))
    with pytest.raises(RecipeError, match="blocks.1 cannot go from blocks.0's 17 to 8 tokens"):
        pass_for(config).apply_assignment(prepared, {"blocks.0": 17, "blocks.1": 8})


def test_class_token_alone_before_last_block_raises_recipe_error():
    with pytest.raises(RecipeError, match="blocks.0 keeps 1 token"):
        _prepare(_timm(), TokensConfig(keep=(1, 1, 1)))


def test_first_choice_of_every_site_is_applied_without_error(tmp_path):
    config = TokensConfig(flops_reduction=0.3, method="merge")
    prepared = _prepare(_timm(), config, _profile(tmp_path, 2))
    first = {s.name: s.choices[0] for s in prepared.space.sites}
    assert pass_for(config).apply_assignment(prepared, first).decisions == first


@pytest.mark.parametrize("method", ["zero-tprune", "merge"])
@pytest.mark.parametrize("multiple", [1, 3, 8, 16])
@pytest.mark.parametrize(
    ("tokens", "defaults"), [(17, (17, 13, 9, 1)), (65, (65, 48, 33, 17, 9, 5)), (197, (190, 150, 99, 60, 31, 1))]
)
def test_first_choices_form_a_feasible_schedule_for_any_multiple(method, multiple, tokens, defaults):
    check_keep(defaults, tokens, method)  # the defaults themselves are feasible
    choices = site_choices(tokens, defaults, multiple, method, cls_only_last=True)
    check_keep(tuple(c[0] for c in choices), tokens, method)
    assert all(d in c and tokens in c and c == tuple(sorted(c)) for d, c in zip(defaults, choices))
    assert all(len(c) <= 14 for c in choices)


def test_long_choice_lists_thinned_to_about_12_keeping_full_and_default():
    choices = site_choices(197, (150,), 8, "zero-tprune", cls_only_last=False)[0]
    assert len(choices) == 13 and choices[-1] == 197 and 150 in choices and choices[0] == 8
    assert all(c % 8 == 0 for c in choices if c not in (150, 197))


def test_keep_by_name_left_out_block_keeps_what_it_receives():
    prepared = _prepare(_timm(), TokensConfig(keep=(("blocks.1", 9),)))
    assert prepared.space.defaults() == {"blocks.0": 17, "blocks.1": 9, "blocks.2": 9}


def test_keep_by_name_unknown_block_raises_recipe_error_listing_blocks():
    with pytest.raises(RecipeError, match=r"keep names \['blocks\.7'\].*blocks\.0, blocks\.1, blocks\.2"):
        _prepare(_timm(), TokensConfig(keep=(("blocks.7", 9),)))


def test_with_assignment_sets_keep_by_block_name_and_drops_flops_target():
    config = TokensConfig(flops_reduction=0.3, method="merge", token_multiple=4)
    moved = config.with_assignment({"blocks.0": 16, "blocks.1": 12, "blocks.2": 1})
    assert moved.keep == (("blocks.0", 16), ("blocks.1", 12), ("blocks.2", 1)) and moved.flops_reduction is None
    assert (moved.method, moved.token_multiple) == ("merge", 4)


def test_with_assignment_refuses_non_count_choice():
    with pytest.raises(RecipeError, match="positive integers"):
        TokensConfig(flops_reduction=0.3).with_assignment({"blocks.0": "8"})


def test_apply_assignment_leaves_prepared_template_untouched():
    config = TokensConfig(keep=(13, 9, 1))
    prepared = _prepare(_timm(), config)
    for assignment in ({"blocks.0": 16}, {"blocks.0": 16, "blocks.1": 16}):
        pass_for(config).apply_assignment(prepared, assignment)
    assert [prepared.template.get_submodule(p).keep for p in BLOCKS] == [None, None, None]
