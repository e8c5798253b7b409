"""Low-rank factorization (truncated SVD) of linears and convolutions, ``kind = "lowrank"``.

    from repfx_deploy.passes.lowrank import LowRankConfig
    from repfx_deploy.passes.registry import apply, pass_for
    result = apply(model, LowRankConfig(params_ratio=0.5), context)     # a PassResult; ``model`` is untouched
    prepared = pass_for(config).prepare(model, config, context)         # SVDs once, then many assignments

The pass itself is ``handler.LowRankPass`` (imported by the registry when a recipe names the kind).
"""

from repfx_deploy.passes.lowrank.config import LowRankConfig

__all__ = ["LowRankConfig"]
