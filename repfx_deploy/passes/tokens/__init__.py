"""Token reduction for vision transformers: Zero-TPrune (importance + similarity) and ToMe-style merging.

    config.py      TokensConfig: method, FLOPs target or explicit per-block keep counts, Zero-TPrune options
    adapters.py    which blocks can be patched (nn.TransformerEncoderLayer, timm-style Block, HF ViT/DINOv2)
    block.py       the patched block: explicit attention, then token removal before the MLP
    importance.py  weighted PageRank over the attention graph
    select.py      Zero-TPrune: importance partition, similarity, drop or merge
    merge.py       ToMe bipartite matching and the static gather/merge primitives
    schedule.py    keep-per-block from a FLOPs reduction, counted on the patched model
    core.py        ``reduce_tokens(model, input_specs, TokensConfig(...))``
    handler.py     the recipe's ``kind = "tokens"``
"""

from repfx_deploy.passes.tokens.config import TokensConfig
from repfx_deploy.passes.tokens.core import TokensResult, reduce_tokens

__all__ = ["TokensConfig", "TokensResult", "reduce_tokens"]
