"""The recipe's ``kind = "tokens"``: validate the options, reduce the tokens, report the schedule and MACs.

    [[passes]]
    kind = "tokens"
    method = "zero-tprune"       # or "merge" (ToMe bipartite matching)
    flops_reduction = 0.35       # remove 35 % of the MACs (or keep = [58, 51, 44, 37, 30, 1], one count per block)
    layers = [0, 1, 2, 3, 4]     # blocks that remove tokens (default: all but the last)
    schedule = "constant"        # same count removed at each of them, or "ratio" (same fraction)
    token_multiple = 1           # round searched counts to a multiple (16: whole vectors in TVM's attention kernels)
    cls_only_last = "auto"       # last block computes the class token alone when the output reads only it
    pagerank_iterations = 5
    head_aggregation = "mean"    # or "rms"
    pagerank_start = "uniform"   # or "cls": importance flows from the class token
    candidate_factor = 2.0       # least important 2 x R tokens compete; the R most redundant go
    reduction = "merge"          # the removed tokens into their most similar kept token, or "drop" them

No fine-tuning is involved: the pass is zero-shot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.registry import PassContext, PassResult, register_pass

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.passes.tokens.config import TokensConfig

TOKENS_KEYS = (
    "method", "flops_reduction", "keep", "layers", "schedule", "tolerance", "token_multiple", "cls_only_last",
    "pagerank_iterations", "head_aggregation", "pagerank_start", "candidate_factor", "reduction",
)


def parse_options(options: Mapping[str, Any]) -> "TokensConfig":
    """Recipe table -> ``TokensConfig``; ``RecipeError`` on unknown keys or bad values."""
    from repfx_deploy.passes.tokens.config import TokensConfig

    unknown = sorted(set(options) - set(TOKENS_KEYS))
    if unknown:
        raise RecipeError(f"Unknown option(s) {', '.join(map(repr, unknown))} in the tokens pass.", f"Use only: {', '.join(TOKENS_KEYS)}.")
    opts = dict(options)
    for key in ("keep", "layers"):
        if key in opts and not isinstance(opts[key], (list, tuple)):
            raise RecipeError(f"{key} must be a list of integers; got {opts[key]!r}.", f"Write {key} = [58, 51, 44].")
    try:
        return TokensConfig(**opts)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"Bad tokens pass option: {e}", "Fix the value in the recipe's [[passes]] table.") from e


@register_pass("tokens")
def tokens_handler(module: "nn.Module", options: Mapping[str, Any], context: PassContext) -> PassResult:
    """Patch ``module``'s transformer blocks to remove tokens as the options say (zero-shot)."""
    from repfx_deploy.passes.tokens.core import reduce_tokens

    config = parse_options(options)
    result = reduce_tokens(module, context.input_specs, config)
    return PassResult(result.module, result.stats)
