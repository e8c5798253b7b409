"""Hugging Face model folders: recognised by their contents, loaded offline, wrapped to return one tensor."""

from __future__ import annotations

import pytest
import torch

from repfx_deploy.errors import ModelLoadError
from repfx_deploy.ingest import load_model
from repfx_deploy.ingest.formats import detect_format
from repfx_deploy.spec import InputSpec


@pytest.fixture
def llama_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, max_position_embeddings=32, architectures=["LlamaForCausalLM"])
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


@pytest.fixture
def bert_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def test_causal_lm_folder_loads_as_token_ids_to_logits(llama_folder):
    loaded = load_model(llama_folder)
    assert loaded.format == "hf_folder" and len(loaded.sha256) == 64
    assert loaded.input_specs == (InputSpec("input_ids", (1, 128), "int64"),)
    out = loaded.module(torch.zeros(1, 8, dtype=torch.long))
    assert type(loaded.module).__name__ == "CausalLMLogits" and out.shape == (1, 8, 50)


def test_bert_folder_loads_as_token_ids_to_hidden_states(bert_folder):
    from repfx_deploy.ingest.loader import LoadOptions

    loaded = load_model(bert_folder, LoadOptions(input_specs=(InputSpec("input_ids", (1, 8), "int64"),)))
    assert type(loaded.module).__name__ == "EncoderHiddenStates"
    assert loaded.module(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 32)


def test_folder_without_config_or_single_gguf_is_refused_with_a_fix(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"y")
    with pytest.raises(ModelLoadError, match="folder"):
        detect_format(tmp_path)


def test_folder_with_broken_weights_is_a_load_error(llama_folder):
    for f in llama_folder.glob("*.safetensors"):
        f.write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(llama_folder)
