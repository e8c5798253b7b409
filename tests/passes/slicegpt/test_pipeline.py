"""End to end: a Hugging Face folder, sliced by a recipe, exported, compiled with TVM and verified."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repfx_deploy.ingest.loader import LoadOptions
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.pipeline.compress import CompressRequest, compress
from repfx_deploy.recipe import load_recipe

pytestmark = pytest.mark.tvm


def test_compress_slices_a_llama_folder_and_every_runtime_agrees(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    np.savez(tmp_path / "tokens.npz", x=np.random.default_rng(0).integers(0, 100, (16, 16)).astype(np.int64))
    (tmp_path / "recipe.toml").write_text("""
input_shape = "input_ids=1,16:int64"
[data]
calibration = "tokens.npz"
[[passes]]
kind = "slicegpt"
slicing = 0.25
batch_size = 4
""")
    report = compress(
        CompressRequest(
            model_path=tmp_path / "llama",
            out_dir=tmp_path / "out",
            recipe=load_recipe(tmp_path / "recipe.toml"),
            load=LoadOptions(),
            timing=TimingConfig(warmup=1, repeats=3, min_time_s=0.0, remeasure=0),
        )
    )
    assert report["status"] == "ok"
    stats = report["passes"][0]["extras"]
    assert (stats["hidden_before"], stats["hidden_after"]) == (64, 48)
    assert report["compressed"]["macs"] < report["baseline"]["macs"]
    assert (tmp_path / "out" / "tvm" / "model.so").exists()
    pairs = {(v["reference"], v["candidate"]): v for v in report["verification"]}
    assert set(pairs) == {("torch", "onnxruntime"), ("onnxruntime", "tvm"), ("torch", "tvm")}
    assert all(v["max_abs_error"] < 1e-4 for v in pairs.values())
