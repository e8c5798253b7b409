"""Applying a plan: attributes that follow the weights, head counts, and forward literals."""

from __future__ import annotations

import torch
from prune_zoo import BertLayer, LiteralFlattenNet, OptionANet, TinyViT

from repfx_deploy.passes.prune import PruneConfig, prune


def test_apply_updates_head_counts_of_attention_layers():
    vit = prune(TinyViT().eval(), (torch.zeros(1, 3, 16, 16),), PruneConfig(ratio=0.5, round_to=8)).module
    assert (
        vit.block.attn.num_heads == 2
        and vit.block.attn.qkv.out_features == 48
        and vit.block.attn.proj.in_features == 16
    )
    assert vit.cls_token.shape[-1] == vit.patch.out_channels == vit.pos_embed.shape[-1] == 16
    bert = prune(BertLayer().eval(), (torch.zeros(1, 8, 32),), PruneConfig(ratio=0.5, round_to=8)).module
    assert (
        bert.attention.num_attention_heads == 2
        and bert.attention.all_head_size == 16
        and bert.attn_out.in_features == 16
    )
    assert bert.attn_norm.normalized_shape == (32,)  # the residual stream is the model output: kept


def test_apply_updates_pad_attribute_and_keeps_the_class():
    result = prune(OptionANet().eval(), (torch.zeros(1, 3, 16, 16),), PruneConfig(ratio=0.5, round_to=4))
    assert type(result.module) is OptionANet and not result.extras["graph_module"]
    assert result.module.layers[1].pad == 4
    assert {e["old"] for e in result.extras["literals"]} == {8}


def test_apply_returns_graph_module_when_channel_count_is_a_bare_literal():
    model = LiteralFlattenNet().eval()
    x = torch.randn(1, 1, 8, 8)
    result = prune(model, (x,), PruneConfig(ratio=0.5, round_to=4))
    assert result.extras["graph_module"] and result.extras["module_type"] == "GraphModule"
    assert result.module.fc.in_features == 8 * 4 * 4
    assert result.module(x).shape == (1, 10)
