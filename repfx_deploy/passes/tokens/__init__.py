"""Token reduction for vision transformers: Zero-TPrune (importance + similarity) and ToMe-style merging.

    config.py      TokensConfig: method, FLOPs target or explicit keep counts (per block, by name), Zero-TPrune options
    adapters.py    which blocks can be patched (nn.TransformerEncoderLayer, timm-style Block, HF ViT/DINOv2)
    block.py       the patched block: explicit attention, then token removal before the MLP
    importance.py  weighted PageRank over the attention graph
    select.py      Zero-TPrune: importance partition, similarity, drop or merge
    merge.py       ToMe bipartite matching and the static gather/merge primitives
    schedule.py    keep-per-block from a FLOPs reduction, counted on the patched model; each site's choices
    core.py        prepare once (patch, check, search the default), build a copy with given counts
    handler.py     TokensPass, the recipe's ``kind = "tokens"`` (the pass protocol)

Apply it as any pass: ``registry.apply(model, TokensConfig(flops_reduction=0.35), context)``.
"""

from repfx_deploy.passes.tokens.config import TokensConfig

__all__ = ["TokensConfig"]
