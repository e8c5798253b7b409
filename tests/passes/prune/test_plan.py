"""Planning: rounding to the vector width, per-layer ratios, ignored layers, and the MACs target."""

from __future__ import annotations

import torch
from prune_zoo import BasicBlockNet, OptionANet

from repfx_deploy.analyze.torch_stats import torch_stats
from repfx_deploy.passes.prune import PruneConfig, prune
from repfx_deploy.spec import InputSpec

X = (torch.zeros(1, 3, 16, 16),)
SPECS = (InputSpec("input", (1, 3, 16, 16)),)


def test_plan_rounds_every_width_to_round_to():
    result = prune(BasicBlockNet().eval(), X, PruneConfig(ratio=0.3, round_to=8))
    m = result.module
    for conv in (m.stem[0], m.a1, m.a2, m.c1, m.c2, m.proj[0]):
        assert conv.out_channels % 8 == 0
    assert m.c1.out_channels == 24 and m.stem[0].out_channels == 8  # 32*0.7=22.4 -> 24; 16*0.7=11.2 -> 8


def test_plan_keeps_group_whole_when_not_wider_than_round_to():
    m = prune(BasicBlockNet().eval(), X, PruneConfig(ratio=0.5, round_to=16)).module
    assert m.stem[0].out_channels == 16 and m.c1.out_channels == 16


def test_plan_applies_layer_ratios_by_pattern():
    m = prune(
        BasicBlockNet().eval(), X, PruneConfig(ratio=0.5, round_to=4, layer_ratios=(("c1", 0.0), ("a1", 0.25)))
    ).module
    assert m.c1.out_channels == 32 and m.a1.out_channels == 12 and m.stem[0].out_channels == 8


def test_plan_keeps_output_channels_of_ignored_layers():
    m = prune(BasicBlockNet().eval(), X, PruneConfig(ratio=0.5, round_to=4, ignore=("a1",))).module
    assert m.a1.out_channels == 16 and m.c1.out_channels == 16


def test_plan_reaches_macs_target():
    model = OptionANet().eval()
    result = prune(model, X, PruneConfig(macs_ratio=0.5, round_to=4))
    kept = torch_stats(result.module, SPECS).macs / torch_stats(model, SPECS).macs
    assert result.extras["macs_estimate_ratio"] <= 0.5
    assert 0.35 < kept <= 0.5 + 0.02  # the estimate leaves out BatchNorm/pooling, which torch_stats counts


def test_plan_lands_closer_to_macs_target_when_refined():
    model = BasicBlockNet().eval()
    full = torch_stats(model, SPECS).macs
    kept = {
        refine: torch_stats(prune(model, X, PruneConfig(macs_ratio=0.6, round_to=8, refine=refine)).module, SPECS).macs
        / full
        for refine in (False, True)
    }
    assert kept[False] < kept[True] <= 0.6 + 0.02
    assert 0.6 - kept[True] < 0.6 - kept[False]


def test_plan_refinement_leaves_layer_ratios_alone():
    m = prune(BasicBlockNet().eval(), X, PruneConfig(macs_ratio=0.6, round_to=4, layer_ratios=(("c1", 0.5),))).module
    assert m.c1.out_channels == 16


def test_plan_keeps_symmetric_zero_pad_symmetric():
    m = prune(OptionANet().eval(), X, PruneConfig(ratio=0.5, round_to=4)).module
    block = m.layers[1]
    assert block.pad * 2 + m.conv1.out_channels == block.conv2.out_channels
