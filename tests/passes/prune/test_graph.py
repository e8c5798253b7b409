"""Dependency analysis: which channels go together, and a clear refusal naming the layer otherwise."""

from __future__ import annotations

import pytest
import torch
from prune_zoo import BasicBlockNet, ChannelShuffleNet, InvertedResidualNet, OptionANet

from repfx_deploy.errors import PassError
from repfx_deploy.passes.prune import PruneConfig, prune
from repfx_deploy.passes.prune.graph import analyze


def _out_classes(graph, layer: str) -> list[int]:
    cut = next(c for c in graph.cuts if c.module == layer and c.name == "weight" and c.role == "out")
    return [graph.classes.find(e) for e in cut.elems]


def test_analyze_unites_channels_across_residual_adds():
    g = analyze(BasicBlockNet().eval(), (torch.zeros(1, 3, 16, 16),))
    assert _out_classes(g, "stem.0") == _out_classes(g, "a2")  # identity shortcut: the same 16 units
    assert _out_classes(g, "proj.0") == _out_classes(g, "c2")  # projection shortcut and branch
    assert set(_out_classes(g, "a1")).isdisjoint(_out_classes(g, "a2"))  # block-internal: its own group


def test_analyze_couples_depthwise_conv_inputs_and_outputs():
    g = analyze(InvertedResidualNet().eval(), (torch.zeros(1, 3, 16, 16),))
    assert _out_classes(g, "blocks.0.conv.0") == _out_classes(g, "blocks.0.conv.3")


def test_analyze_pins_model_outputs():
    g = analyze(BasicBlockNet().eval(), (torch.zeros(1, 3, 16, 16),))
    assert all(g.classes.pinned[r] for r in _out_classes(g, "fc"))


def test_analyze_maps_option_a_padding_onto_the_wider_stage():
    g = analyze(OptionANet().eval(), (torch.zeros(1, 3, 16, 16),))
    stage1, stage2 = _out_classes(g, "conv1"), _out_classes(g, "layers.1.conv2")
    # 32 channels after the shortcut: 8 zero channels, the 16 of stage 1, 8 zero channels
    assert stage2[8:24] == stage1 and len(g.pairs) == 1
    assert set(stage2[:8] + stage2[24:]).isdisjoint(stage1)


def test_prune_raises_pass_error_naming_the_layer_when_reshape_splits_channels():
    with pytest.raises(PassError) as info:
        prune(ChannelShuffleNet().eval(), (torch.zeros(1, 3, 8, 8),), PruneConfig(round_to=1))
    message = str(info.value)
    assert "'shuffle'" in message and "splits the channels" in message and "ignore" in message


def test_prune_leaves_an_ignored_unknown_layer_whole_when_listed_in_ignore():
    model = ChannelShuffleNet().eval()
    result = prune(model, (torch.zeros(1, 3, 8, 8),), PruneConfig(round_to=1, ignore=("shuffle",)))
    x = torch.randn(1, 3, 8, 8)
    # the shuffle reads every channel of the conv, so nothing around it may change
    assert result.module.conv.out_channels == 16
    torch.testing.assert_close(result.module(x), model(x))
