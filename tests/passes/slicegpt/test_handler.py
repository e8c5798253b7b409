"""The recipe's kind = "slicegpt": option checking, calibration data, and a run through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes.registry import PassContext, apply_passes
from repfx_deploy.passes.slicegpt.handler import calibration_batches, parse_options
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input_ids", (1, 16), "int64"),)


def _token_data(n=12, seed=0):
    return Dataset(x=np.random.default_rng(seed).integers(0, 100, (n, 16)).astype(np.int64), y=None, source="tokens.npz")


def test_parse_options_refuses_unknown_keys_and_missing_slicing():
    with pytest.raises(RecipeError, match="sparsity"):
        parse_options({"slicing": 0.2, "sparsity": 0.2})
    with pytest.raises(RecipeError, match="slicing = 0.25"):
        parse_options({})
    with pytest.raises(RecipeError, match="Bad slicegpt"):
        parse_options({"slicing": 1.5})


def test_parse_options_reads_the_schedule_and_a_widths_array():
    config = parse_options({"slicing": 0.25, "schedule": "ramp", "ramp": 0.4, "widths": [64, 48, 48]})
    assert (config.schedule, config.ramp, config.widths) == ("ramp", 0.4, (64, 48, 48))


def test_calibration_batches_refuses_images_and_caps_the_sample_count():
    images = Dataset(x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32), y=None, source="imgs.npz")
    with pytest.raises(RecipeError, match="token ids"):
        calibration_batches(images, parse_options({"slicing": 0.25}))
    batches = calibration_batches(_token_data(12), parse_options({"slicing": 0.25, "calibration_samples": 10, "batch_size": 4}))
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2] and batches[0]["input_ids"].dtype == torch.int64


def test_handler_slices_the_wrapped_model_and_reports_dims_macs_and_params(tiny_llama):
    from repfx_deploy.ingest.hf import wrap_hf_model

    module = wrap_hf_model(tiny_llama, "causal-lm")
    context = PassContext(input_specs=SPECS, calibration=_token_data())
    out, records = apply_passes(module, (("slicegpt", {"slicing": 0.25, "batch_size": 4, "slice_head": False}),), context)
    stats = records[0]["stats"]
    assert (stats["hidden_before"], stats["hidden_after"], stats["head_width"]) == (64, 48, 64)
    assert stats["macs_after"] < stats["macs_before"]
    assert stats["calibration_tokens"] == 12 * 16
    assert out(torch.zeros(SPECS[0].shape, dtype=torch.long)).shape == (1, 16, 100)


def test_handler_needs_calibration_data(tiny_llama):
    from repfx_deploy.ingest.hf import wrap_hf_model

    with pytest.raises(RecipeError, match="calibration"):
        apply_passes(wrap_hf_model(tiny_llama, "causal-lm"), (("slicegpt", {"slicing": 0.25}),), PassContext(input_specs=SPECS))


def test_handler_refuses_a_model_that_is_not_a_supported_transformer():
    context = PassContext(input_specs=(InputSpec("input", (1, 4)),), calibration=_token_data())
    with pytest.raises(PassError, match="does not know the layout"):
        apply_passes(torch.nn.Linear(4, 4), (("slicegpt", {"slicing": 0.25}),), context)
