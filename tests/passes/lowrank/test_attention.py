"""Unfusing attention keeps the function and exposes plain linears."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from lowrank_zoo import TinyEncoder

from repfx_deploy.passes.lowrank.attention import (
    ExplicitAttention,
    ExplicitEncoderLayer,
    unfuse_attention,
)


@pytest.mark.parametrize("norm_first", [False, True])
def test_unfused_encoder_matches_fused_fast_path(norm_first):
    torch.manual_seed(0)
    model = TinyEncoder(norm_first).eval()
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        ref = model(x)
        done = unfuse_attention(model)
        out = model(x)
    assert len(done) == 4
    assert all(isinstance(layer, ExplicitEncoderLayer) for layer in model.encoder.layers)
    assert isinstance(model.encoder.layers[0].self_attn.q_proj, nn.Linear)
    assert torch.allclose(out, ref, atol=1e-5)


def test_explicit_attention_matches_mha_with_masks_and_weights_when_sequence_first():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4).eval()
    explicit = ExplicitAttention.from_fused(mha)
    q = torch.randn(6, 2, 16)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        ref, ref_w = mha(q, q, q, attn_mask=causal, key_padding_mask=pad)
        out, w = explicit(q, q, q, attn_mask=causal, key_padding_mask=pad)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(w, ref_w, atol=1e-6)


def test_unfuse_leaves_attention_with_bias_kv_fused():
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    done = unfuse_attention(model)
    assert type(model[0]) is nn.MultiheadAttention and "left fused" in done[0]
