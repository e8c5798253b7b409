"""Sliced models lower to ONNX like any other model and ONNX Runtime agrees with torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repfx_deploy.ingest.hf import wrap_hf_model
from repfx_deploy.lower.onnx_export import export_onnx
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.passes.slicegpt import SliceGPTConfig, slice_model
from repfx_deploy.spec import InputSpec


@pytest.mark.parametrize(("fixture", "task"), [("tiny_llama", "causal-lm"), ("tiny_bert", "encoder")])
def test_sliced_model_exports_to_onnx_and_matches_torch(request, tmp_path, token_batches, probe_ids, fixture, task):
    model = request.getfixturevalue(fixture)
    slice_model(model, token_batches, SliceGPTConfig(slicing=0.25))
    module = wrap_hf_model(model, task)
    spec = InputSpec("input_ids", (1, probe_ids.shape[1]), "int64")
    path = export_onnx(module, (spec,), tmp_path / "sliced.onnx").path
    ids = probe_ids[:1].numpy()
    with torch.no_grad():
        expected = module(torch.from_numpy(ids)).numpy()
    got = OrtRunner(path, threads=1).run([ids])[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
