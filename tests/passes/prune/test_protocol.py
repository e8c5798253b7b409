"""The prune pass keeps the pass protocol: one site per group of coupled channels (knob channels_kept), prepare
(trace, score, plan) once, apply_assignment (plan from the cached scores, slice a copy) many times."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from protocol_checks import check_protocol, make_context
from prune_zoo import BasicBlockNet, DenseNet, LiteralFlattenNet, OptionANet, TinyViT

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import RecipeError
from repfx_deploy.passes import registry
from repfx_deploy.passes.prune import PruneConfig, core
from repfx_deploy.passes.prune.handler import PrunePass
from repfx_deploy.passes.registry import parse_pass, pass_for_kind
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import get_profile, load_profile_file

SHAPE = (1, 3, 16, 16)
SPECS = (InputSpec("input", SHAPE),)
RPI4 = get_profile("rpi4")  # channel_multiple 8


def _images(n: int, shape=SHAPE[1:], labeled: bool = False) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        x=rng.standard_normal((n, *shape)).astype(np.float32),
        y=rng.integers(0, 10, n) if labeled else None,
        source="random",
    )


def _model(cls, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(**kwargs).eval()


@pytest.mark.parametrize(
    ("build", "shape", "table"),
    [
        (OptionANet, SHAPE, {"ratio": 0.5}),  # zero-pad shortcut: a literal per block, a group nested in another
        (BasicBlockNet, SHAPE, {"macs_ratio": 0.5, "importance": "l1"}),  # bisection and refinement
        (TinyViT, SHAPE, {"ratio": 0.5}),  # attention heads, class token, position embedding
        (
            DenseNet,
            SHAPE,
            {"ratio": 0.5, "layer_ratios": {"dense.1.conv": 0.0}},
        ),  # concatenations: groups without a site
        (LiteralFlattenNet, (1, 1, 8, 8), {"ratio": 0.5}),  # a bare literal: the result is a GraphModule
    ],
)
def test_prune_protocol_holds_on_tiny_models(build, shape, table):
    config = parse_pass({"kind": "prune", **table}, 0)
    context = make_context((InputSpec("input", shape),), calibration=_images(32, shape[1:]), profile=RPI4)
    default, moved = check_protocol(_model(build), config, context, (torch.randn(*shape),))
    assert default.params_after < default.params_before
    assert moved.extras["groups"] and "bn_recalibrated" in moved.extras


def test_prune_space_lists_one_site_per_group_in_module_order_with_kept_choices():
    space = PrunePass().space(_model(BasicBlockNet), PruneConfig(ratio=0.5), make_context(SPECS, profile=RPI4))
    assert [s.name for s in space.sites] == ["stem.0", "a1", "c1", "proj.0"]
    assert {s.knob for s in space.sites} == {"channels_kept"}
    assert space.site("stem.0").choices == (8, 16) and space.site("c1").choices == (8, 16, 24, 32)
    assert space.defaults() == {"stem.0": 8, "a1": 8, "c1": 16, "proj.0": 16}
    assert [s.unchanged for s in space.sites] == [16, 16, 32, 32]


def test_prune_space_leaves_out_groups_without_channels_of_their_own():
    space = PrunePass().space(_model(DenseNet), PruneConfig(ratio=0.5), make_context(SPECS, profile=RPI4))
    names = [s.name for s in space.sites]
    assert names == ["stem", "dense.0.conv", "dense.1.conv", "dense.2.conv", "transition.2"]  # no "dense.0" (a concat)


def test_prune_space_steps_attention_heads_by_whole_heads():
    space = PrunePass().space(_model(TinyViT), PruneConfig(ratio=0.5), make_context(SPECS, profile=get_profile("host")))
    heads = space.site("block.attn")  # 4 heads of 8 channels, host multiple 16: two heads per step
    assert heads.choices == (16, 32) and heads.default == 16


def test_prune_space_thins_long_choice_lists_keeping_default_and_full_width():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 512, 1), torch.nn.ReLU(), torch.nn.Conv2d(512, 10, 1))
    config = PruneConfig(ratio=0.37, round_to=1)
    (site,) = PrunePass().space(model, config, make_context(SPECS, profile=RPI4)).sites
    assert site.name == "0" and site.unchanged == 512 and 512 in site.choices
    assert site.default == 323 and site.default in site.choices  # 512 * 0.63 = 322.6: the plan's own count
    assert len(site.choices) <= 13 and min(site.choices) == 52  # max_ratio 0.9 keeps at least 52 of 512


def test_prune_channels_fixes_each_site_exactly_and_wins_over_ratios():
    config = parse_pass(
        {"kind": "prune", "ratio": 0.5, "layer_ratios": {"c1": 0.75}, "channels": {"c1": 24, "stem.0": 16}}, 0
    )
    result = registry.apply(_model(BasicBlockNet), config, make_context(SPECS, profile=RPI4))
    assert result.module.c1.out_channels == 24 and result.module.stem[0].out_channels == 16
    assert result.module.a1.out_channels == 8  # the others still follow ratio
    assert result.decisions == {"stem.0": 16, "a1": 8, "c1": 24, "proj.0": 16}


def test_prune_channels_holds_while_macs_ratio_searches_the_other_sites():
    context = make_context(SPECS, profile=RPI4)
    config = PruneConfig(macs_ratio=0.5, channels=(("proj.0", 32),))
    result = registry.apply(_model(BasicBlockNet), config, context)
    assert result.decisions["proj.0"] == 32 and result.module.c2.out_channels == 32
    assert result.macs_kept <= 0.52 and result.decisions["c1"] < 32


def test_prune_with_assignment_sets_channels_to_the_whole_assignment():
    config = PruneConfig(macs_ratio=0.5)
    assigned = config.with_assignment({"stem.0": 8, "a1": 16})
    assert assigned.channels == (("stem.0", 8), ("a1", 16)) and assigned.macs_ratio == 0.5
    assert parse_pass({"kind": "prune", **assigned.to_table()}, 0) == assigned


@pytest.mark.parametrize(
    ("channels", "match"),
    [
        ({"c9": 8}, "'c9', which is not a prunable site"),
        ({"a2": 8}, "shares its channels with site 'stem.0'"),
        ({"c1": 40}, "only 32 channels"),
    ],
)
def test_prune_channels_raises_recipe_error_when_site_is_unknown_or_too_wide(channels, match):
    config = parse_pass({"kind": "prune", "channels": channels}, 0)
    with pytest.raises(RecipeError, match=match):
        PrunePass().prepare(_model(BasicBlockNet), config, make_context(SPECS, profile=RPI4))


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"ratioo": 0.5}, r"'ratioo' in passes\[0\]"),
        ({"ratio": "half"}, r"passes\[0\]\.ratio must be a finite number"),
        ({"channels": {"a1": "eight"}}, r"passes\[0\]\.channels\.a1 must be an integer"),
        ({"channels": {"a1": 0}}, r"passes\[0\]: channels maps a site"),
        ({"layer_ratios": [0.5]}, r"passes\[0\]\.layer_ratios must be"),
        ({"importance": "l3"}, r"passes\[0\]\.importance must be one of 'l1', 'l2', 'bn_scale', 'taylor'"),
        ({"macs_ratio": 1.5}, r"passes\[0\]: macs_ratio is the fraction of MACs kept, in \(0, 1\]"),
        ({"round_to": 0}, r"passes\[0\]: round_to must be a positive integer"),
        ({"ignore": "fc"}, r"passes\[0\]\.ignore must be a list"),
        ({"bn_batches": 0}, r"passes\[0\]: bn_batches must be >= 1"),
    ],
)
def test_parse_pass_raises_recipe_error_naming_the_key_when_prune_key_is_bad(table, match):
    with pytest.raises(RecipeError, match=match):
        parse_pass({"kind": "prune", **table}, 0)


def test_parse_pass_shows_the_recover_form_when_prune_sets_finetuning_keys():
    with pytest.raises(RecipeError) as info:
        parse_pass({"kind": "prune", "ratio": 0.5, "finetune_steps": 10, "lr": 0.1}, 0)
    message = str(info.value)
    assert (
        "fine-tuning is now its own pass" in message
        and 'kind = "recover"' in message
        and "finetune_steps = 10" in message
    )


def test_parse_pass_keeps_the_bn_keys_as_prune_keys():
    config = parse_pass({"kind": "prune", "bn_recalibrate": False, "bn_batches": 4}, 0)
    assert config == PruneConfig(bn_recalibrate=False, bn_batches=4)


def test_prune_rounds_to_the_channel_multiple_of_a_profile_loaded_from_a_file(tmp_path):
    path = tmp_path / "quad.toml"
    path.write_text(
        'name = "quad"\ndescription = "a test board"\nchannel_multiple = 4\n'
        '[tvm_target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\nmcpu = "cortex-a53"\n'
    )
    context = make_context(SPECS, profile=load_profile_file(path))
    result = registry.apply(_model(BasicBlockNet), parse_pass({"kind": "prune", "ratio": 0.3}, 0), context)
    assert result.extras["round_to"] == 4
    assert result.module.stem[0].out_channels == 12 and result.module.c1.out_channels == 24  # 11.2 -> 12, 22.4 -> 24
    space = PrunePass().space(_model(BasicBlockNet), PruneConfig(ratio=0.3), context)
    assert space.site("stem.0").choices == (4, 8, 12, 16)


def test_prune_apply_assignment_neither_traces_nor_scores_nor_searches(monkeypatch):
    prepared = core.prepare(_model(OptionANet), PruneConfig(macs_ratio=0.5), make_context(SPECS, profile=RPI4))
    import repfx_deploy.passes.prune.graph as graph
    import repfx_deploy.passes.prune.importance as importance
    import repfx_deploy.passes.prune.plan as plan

    def refuse(*args, **kwargs):
        raise AssertionError("apply_assignment redid work that prepare caches")

    for module, name in (
        (graph, "analyze"),
        (importance, "class_scores"),
        (plan, "search_ratio"),
        (plan, "refine_to_target"),
        (plan, "config_plan"),
        (plan, "find_groups"),
    ):
        monkeypatch.setattr(module, name, refuse)
    sizes = []
    for width in (8, 16, 32):
        result = core.apply_assignment(prepared, {"layers.1.conv1": width})
        sizes.append(result.module.layers[1].conv1.out_channels)
    assert sizes == [8, 16, 32]
    assert prepared.model.layers[1].conv1.out_channels == 32 and len(prepared.graph.gm.graph.nodes) > 0


def test_prune_recalibrates_batchnorm_on_calibration_data():
    context = make_context(SPECS, calibration=_images(64), profile=RPI4)
    result = registry.apply(_model(OptionANet), PruneConfig(ratio=0.5, bn_batches=2), context)
    assert result.extras["bn_recalibrated"] == 7 and not result.module.training


def test_prune_warns_and_skips_batchnorm_recalibration_without_calibration_data(caplog):
    with caplog.at_level(logging.WARNING, logger="repfx_deploy.passes.prune"):
        result = registry.apply(_model(OptionANet), PruneConfig(ratio=0.5), make_context(SPECS, profile=RPI4))
    assert result.extras["bn_recalibrated"] == 0 and "not re-calibrated" in caplog.text


def test_prune_taylor_importance_raises_recipe_error_without_calibration_data():
    with pytest.raises(RecipeError, match="calibration"):
        pass_for_kind("prune").prepare(
            _model(OptionANet), PruneConfig(importance="taylor"), make_context(SPECS, profile=RPI4)
        )
