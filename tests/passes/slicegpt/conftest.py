"""Tiny randomly initialised transformers (2 layers, hidden 64) with non-trivial norm weights, so folding the
norms is really exercised (fresh models have scale 1 and bias 0). Tests using them skip without transformers."""

from __future__ import annotations

import pytest
import torch

VOCAB, SEQ = 100, 16


def _perturb_norms(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    """A Llama decoder with grouped-query attention and a head tied to the embedding table, as SmolLM2 has."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    return _perturb_norms(transformers.LlamaForCausalLM(config))


@pytest.fixture
def tiny_bert() -> torch.nn.Module:
    """A post-LayerNorm BERT encoder (biases everywhere, three embedding tables)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return _perturb_norms(transformers.BertModel(config))


@pytest.fixture
def token_batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [{"input_ids": torch.randint(0, VOCAB, (4, SEQ), generator=g)} for _ in range(3)]


@pytest.fixture
def probe_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))
