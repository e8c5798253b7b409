"""torch's transformer layers swapped for traceable, head-prunable stand-ins that compute the same function."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from prune_zoo import TorchEncoderViT

from repfx_deploy.passes.prune import PruneConfig, prune
from repfx_deploy.passes.prune.torch_layers import (
    SplitMultiheadAttention,
    make_traceable,
)


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_matches_multihead_attention_with_masks(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    split = SplitMultiheadAttention(mha).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    padding = torch.tensor([[False, False, False, True, True], [False] * 5])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal}, {"attn_mask": torch.randn(5, 5)}):
        want, want_w = mha(x, x, x, **kwargs)
        got, got_w = split(x, x, x, **kwargs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)
    assert split(x, x, x, need_weights=False)[1] is None


@pytest.mark.parametrize("norm_first", [False, True])
def test_make_traceable_keeps_encoder_outputs(norm_first):
    torch.manual_seed(0)
    model = TorchEncoderViT(norm_first=norm_first).eval()
    twin = copy.deepcopy(model)
    assert make_traceable(twin) == ["encoder"]
    assert not any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer)) for m in twin.modules())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), atol=1e-5, rtol=1e-5)


def test_make_traceable_leaves_attention_with_bias_kv_alone():
    model = nn.Sequential(nn.MultiheadAttention(16, 4, add_bias_kv=True))
    assert make_traceable(model) == []
    assert isinstance(model[0], nn.MultiheadAttention)


def test_prune_removes_heads_of_torch_encoder_layers():
    torch.manual_seed(0)
    result = prune(TorchEncoderViT().eval(), (torch.randn(1, 3, 16, 16),), PruneConfig(ratio=0.5, round_to=8))
    attn = result.module.encoder.layers[0].self_attn
    assert attn.num_heads == 2 and attn.q_proj.out_features == 16 and attn.out_proj.in_features == 16
    assert result.module.encoder.layers[0].linear1.out_features == 32
    assert any("replaced by an equivalent traceable module" in n for n in result.extras["notes"])
