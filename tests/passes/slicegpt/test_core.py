"""Folding, rotation and slicing on tiny Llama and BERT models: the invariant, the shapes, the masks."""

from __future__ import annotations

import copy

import pytest
import torch

from repfx_deploy.errors import PassError
from repfx_deploy.passes.slicegpt import SliceGPTConfig, slice_model


def _llama_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _bert_hidden(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask if mask is not None else torch.ones_like(ids)).last_hidden_state


@pytest.mark.parametrize("weighting", ["energy", "unit"])
def test_llama_folded_and_rotated_gives_same_logits_when_nothing_is_sliced(
    tiny_llama, token_batches, probe_ids, weighting
):
    before = _llama_logits(tiny_llama, probe_ids)
    result = slice_model(tiny_llama, token_batches, SliceGPTConfig(slicing=0.0, token_weighting=weighting))
    assert result.hidden_after == 64
    assert torch.allclose(_llama_logits(tiny_llama, probe_ids), before, atol=1e-4)


def test_bert_folded_and_rotated_gives_same_hidden_states_when_nothing_is_sliced(tiny_bert, token_batches, probe_ids):
    before = _bert_hidden(tiny_bert, probe_ids)
    slice_model(tiny_bert, token_batches, SliceGPTConfig(slicing=0.0))
    assert torch.allclose(_bert_hidden(tiny_bert, probe_ids), before, atol=1e-4)


def test_llama_slicing_shrinks_embedding_and_every_linear_that_touches_the_stream(tiny_llama, token_batches, probe_ids):
    dense = copy.deepcopy(tiny_llama)
    result = slice_model(tiny_llama, token_batches, SliceGPTConfig(slicing=0.25))
    assert (result.hidden_before, result.hidden_after, result.head_width) == (64, 48, 48)
    body = tiny_llama.model
    assert body.embed_tokens.weight.shape == (100, 48)
    assert tiny_llama.lm_head.weight.shape == (100, 48)
    assert tiny_llama.lm_head.weight is not body.embed_tokens.weight  # untied: each has its own rotation
    for layer in body.layers:
        attn = layer.attn.body.attention
        assert attn.q_proj.in_features == attn.k_proj.in_features == attn.v_proj.in_features == 48
        assert attn.o_proj.out_features == 48 and attn.q_proj.out_features == 64  # heads are untouched
        assert layer.mlp.body.inner.gate_proj.in_features == 48 and layer.mlp.body.inner.down_proj.out_features == 48
        assert layer.attn.shortcut.weight.shape == (48, 48)
    out = _llama_logits(tiny_llama, probe_ids)
    assert out.shape == _llama_logits(dense, probe_ids).shape and torch.isfinite(out).all()
    assert 0.0 < result.to_dict()["energy_kept_min"] < 1.0


def test_llama_head_and_last_stream_keep_full_width_when_the_head_is_not_sliced(tiny_llama, token_batches, probe_ids):
    dense = copy.deepcopy(tiny_llama)
    result = slice_model(tiny_llama, token_batches, SliceGPTConfig(slicing=0.25, slice_head=False))
    assert (result.hidden_after, result.head_width) == (48, 64)
    body = tiny_llama.model
    assert body.embed_tokens.weight.shape == (100, 48)
    assert tiny_llama.lm_head.weight.shape == (100, 64)
    first, last = body.layers[0], body.layers[-1]
    assert first.mlp.body.inner.down_proj.out_features == 48 and first.mlp.shortcut.weight.shape == (48, 48)
    assert last.attn.body.attention.o_proj.out_features == 48  # only the last stream is kept whole
    assert last.mlp.body.inner.down_proj.out_features == 64 and last.mlp.shortcut.weight.shape == (64, 48)
    out = _llama_logits(tiny_llama, probe_ids)
    assert out.shape == _llama_logits(dense, probe_ids).shape and torch.isfinite(out).all()


def test_llama_end_layers_keep_full_width_and_the_middle_is_sliced(tiny_llama, token_batches, probe_ids):
    before = _llama_logits(tiny_llama, probe_ids)
    slice_model(tiny_llama, token_batches, SliceGPTConfig(slicing=0.25, keep_first_layers=1))
    first, last = tiny_llama.model.layers
    assert tiny_llama.model.embed_tokens.weight.shape == (100, 64)
    assert first.attn.body.attention.q_proj.in_features == 64 and first.mlp.body.inner.down_proj.out_features == 64
    assert last.attn.body.attention.q_proj.in_features == 64 and last.attn.body.attention.o_proj.out_features == 48
    assert last.mlp.shortcut.weight.shape == (48, 48) and tiny_llama.lm_head.weight.shape == (100, 48)
    assert _llama_logits(tiny_llama, probe_ids).shape == before.shape


def test_llama_explicit_stream_widths_shape_every_linear_and_report_the_mean(tiny_llama, token_batches, probe_ids):
    result = slice_model(tiny_llama, token_batches, SliceGPTConfig(widths=(64, 56, 48, 40, 32)))
    first, last = tiny_llama.model.layers
    assert tiny_llama.model.embed_tokens.weight.shape == (100, 64)
    assert first.attn.body.attention.o_proj.out_features == 56 and first.mlp.shortcut.weight.shape == (48, 56)
    assert last.attn.body.attention.q_proj.in_features == 48 and last.mlp.body.inner.down_proj.out_features == 32
    assert tiny_llama.lm_head.weight.shape == (100, 32)
    assert (result.hidden_after, result.stream_widths) == (44, [64, 56, 48, 40, 32])
    assert torch.isfinite(_llama_logits(tiny_llama, probe_ids)).all()


def test_slice_model_refuses_widths_that_do_not_fit_the_model_with_a_fix(tiny_llama, token_batches):
    with pytest.raises(PassError, match="one width per stream"):
        slice_model(tiny_llama, token_batches, SliceGPTConfig(widths=(64, 48, 48)))


@pytest.mark.parametrize("slice_head", [False, True])
def test_sliced_llama_generates_with_a_key_value_cache_as_without(tiny_llama, token_batches, probe_ids, slice_head):
    slice_model(tiny_llama, token_batches, SliceGPTConfig(slicing=0.25, slice_head=slice_head))
    full = _llama_logits(tiny_llama, probe_ids)
    with torch.no_grad():
        cache = tiny_llama(input_ids=probe_ids[:, :-1], use_cache=True).cache
        step = tiny_llama(input_ids=probe_ids[:, -1:], cache=cache, use_cache=True).logits
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-4)


def test_bert_slicing_keeps_the_output_basis_and_shrinks_the_stream(tiny_bert, token_batches, probe_ids):
    before = _bert_hidden(tiny_bert, probe_ids)
    slice_model(tiny_bert, token_batches, SliceGPTConfig(slicing=0.25))
    emb = tiny_bert.embeddings
    assert emb.word_embeddings.weight.shape[1] == emb.position_embeddings.weight.shape[1] == 48
    assert tiny_bert.encoder.layer[0].attn.body.attention.query.in_features == 48
    after = _bert_hidden(tiny_bert, probe_ids)
    assert after.shape == before.shape  # the last layer maps back to the 64-wide output basis
    cos = torch.nn.functional.cosine_similarity(after.flatten(0, 1), before.flatten(0, 1), dim=-1)
    assert cos.mean() > 0.5  # random weights: a loose check that slicing approximates rather than scrambles


def test_bert_padded_tokens_are_left_out_of_the_pca(tiny_bert, token_batches, probe_ids):
    padded = []
    for b in token_batches:
        mask = torch.ones_like(b["input_ids"])
        mask[:, 10:] = 0
        padded.append({"input_ids": b["input_ids"], "attention_mask": mask})
    result = slice_model(copy.deepcopy(tiny_bert), padded, SliceGPTConfig(slicing=0.25))
    assert result.calibration_tokens == 3 * 4 * 10


def test_slice_model_refuses_unknown_architecture_with_a_fix(token_batches):
    with pytest.raises(PassError, match="Llama-style"):
        slice_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), token_batches, SliceGPTConfig(slicing=0.25))


def test_slice_model_refuses_empty_calibration(tiny_llama):
    with pytest.raises(PassError, match="calibration"):
        slice_model(tiny_llama, [], SliceGPTConfig(slicing=0.25))
