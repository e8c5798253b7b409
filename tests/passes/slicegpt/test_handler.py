"""The recipe's kind = "slicegpt": its keys parsed at recipe load, calibration data, and a run through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from protocol_checks import make_context

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes import registry
from repfx_deploy.passes.registry import parse_pass
from repfx_deploy.passes.slicegpt.config import SliceGPTConfig
from repfx_deploy.passes.slicegpt.handler import calibration_batches
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input_ids", (1, 16), "int64"),)


def _token_data(n=12, seed=0):
    return Dataset(
        x=np.random.default_rng(seed).integers(0, 100, (n, 16)).astype(np.int64), y=None, source="tokens.npz"
    )


def _slicegpt(**keys):
    return parse_pass({"kind": "slicegpt", **keys}, 0)


def test_parse_pass_names_the_key_of_an_unknown_key_a_wrong_type_or_a_bad_value():
    with pytest.raises(RecipeError, match=r"'sparsity' in passes\[0\]"):
        _slicegpt(slicing=0.2, sparsity=0.2)
    with pytest.raises(RecipeError, match=r"passes\[0\]\.slicing must be a finite number"):
        _slicegpt(slicing="a quarter")
    with pytest.raises(RecipeError, match=r"passes\[0\]\.widths must be a list, each an integer"):
        _slicegpt(widths=5)
    with pytest.raises(RecipeError, match=r"passes\[0\]: slicing is the fraction .* in \[0, 1\); got 1.5"):
        _slicegpt(slicing=1.5)


def test_parse_pass_needs_slicing_unless_widths_are_given():
    with pytest.raises(RecipeError, match="slicing = 0.25"):
        _slicegpt()
    assert _slicegpt(widths=[64, 48, 48]).widths == (64, 48, 48)


def test_parse_pass_reads_the_schedule_and_a_widths_array():
    config = _slicegpt(slicing=0.25, schedule="ramp", ramp=0.4, widths=[64, 48, 48])
    assert (config.schedule, config.ramp, config.widths) == ("ramp", 0.4, (64, 48, 48))


def test_parse_pass_shows_the_recover_form_for_old_fine_tuning_keys():
    with pytest.raises(RecipeError, match="fine-tuning is now its own pass") as info:
        _slicegpt(slicing=0.25, finetune_epochs=1)
    assert 'kind = "recover"' in info.value.fix


def test_calibration_batches_refuses_images_and_caps_the_sample_count():
    images = Dataset(
        x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32), y=None, source="imgs.npz"
    )
    with pytest.raises(RecipeError, match="token ids"):
        calibration_batches(images, SliceGPTConfig(slicing=0.25))
    batches = calibration_batches(_token_data(12), SliceGPTConfig(slicing=0.25, calibration_samples=10, batch_size=4))
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2] and batches[0]["input_ids"].dtype == torch.int64


def test_pass_slices_the_wrapped_model_and_reports_dims_macs_and_params(tiny_llama):
    from repfx_deploy.ingest.hf import wrap_hf_model

    module = wrap_hf_model(tiny_llama, "causal-lm")
    config = _slicegpt(slicing=0.25, batch_size=4, slice_head=False)
    result = registry.apply(module, config, make_context(SPECS, calibration=_token_data()))
    extras = result.extras
    assert (extras["hidden_before"], extras["hidden_after"], extras["head_width"]) == (64, 48, 64)
    assert result.macs_after < result.macs_before
    assert extras["calibration_tokens"] == 12 * 16
    assert result.decisions == {
        "embed": 48,
        "layers.0.attn": 48,
        "layers.0.mlp": 48,
        "layers.1.attn": 48,
        "layers.1.mlp": 64,
    }
    assert set(extras["energy_kept"]) == set(result.decisions) and 0 < extras["energy_kept"]["embed"] < 1
    assert result.module(torch.zeros(SPECS[0].shape, dtype=torch.long)).shape == (1, 16, 100)
    assert module.hf_model.model.embed_tokens.weight.shape == (100, 64)  # the input is left as it was


def test_pass_takes_the_hugging_face_model_itself(tiny_bert):
    result = registry.apply(
        tiny_bert, _slicegpt(slicing=0.25, batch_size=4), make_context(SPECS, calibration=_token_data())
    )
    assert result.module.embeddings.word_embeddings.weight.shape == (100, 48)
    assert tiny_bert.embeddings.word_embeddings.weight.shape == (100, 64)


def test_pass_needs_calibration_data(tiny_llama):
    from repfx_deploy.ingest.hf import wrap_hf_model

    with pytest.raises(RecipeError, match="calibration"):
        registry.apply(wrap_hf_model(tiny_llama, "causal-lm"), _slicegpt(slicing=0.25), make_context(SPECS))


def test_pass_refuses_a_model_that_is_not_a_supported_transformer():
    context = make_context((InputSpec("input", (1, 4)),), calibration=_token_data())
    with pytest.raises(PassError, match="does not know the layout"):
        registry.apply(torch.nn.Linear(4, 4), _slicegpt(slicing=0.25), context)


def test_pass_refuses_widths_that_do_not_fit_the_model_with_a_fix(tiny_llama):
    from repfx_deploy.ingest.hf import wrap_hf_model

    with pytest.raises(PassError, match="one width per stream"):
        registry.apply(
            wrap_hf_model(tiny_llama, "causal-lm"),
            _slicegpt(widths=[64, 48, 48]),
            make_context(SPECS, calibration=_token_data()),
        )
