"""The recipe's ``kind = "tokens"``: token reduction in a ViT's transformer blocks, zero-shot.

    [[passes]]
    kind = "tokens"
    method = "zero-tprune"       # or "merge" (ToMe bipartite matching)
    flops_reduction = 0.35       # remove 35 % of the MACs, or give the counts:
    # keep = [58, 51, 44, 37, 30, 1]                           one count per block, or by block name:
    # keep = {"encoder.layers.2" = 33, "encoder.layers.5" = 1}   (a block left out keeps what it receives)
    layers = [0, 1, 2, 3, 4]     # blocks the search removes tokens at (default: all but the last)
    schedule = "constant"        # same count removed at each of them, or "ratio" (same fraction)
    token_multiple = 16          # round searched counts to a multiple (whole vectors in TVM's attention kernels)
    cls_only_last = "auto"       # last block computes the class token alone when the output reads only it
    pagerank_iterations = 5
    head_aggregation = "mean"    # or "rms"
    pagerank_start = "uniform"   # or "cls": importance flows from the class token
    candidate_factor = 2.0       # least important 2 x R tokens compete; the R most redundant go
    reduction = "merge"          # the removed tokens into their most similar kept token, or "drop" them

The space: one site per patched block, named by the block's module name (``"blocks.3"``), knob
``tokens_kept``: the tokens leaving that block, class token included. Choices are the counts from a floor up to
the tokens every block receives in the unreduced model (the unchanged choice), in multiples of
``token_multiple`` or, when it is unset, of the target's ``channel_multiple``, thinned to about 12, plus the
default (the recipe's own counts) and, on the last block, 1 (the class token alone) when the model allows it.
Counts must not grow along depth: an assignment where a block keeps more tokens than the block before it (or
more than that block can remove, for ``merge``) is a ``RecipeError`` naming both blocks, not clamped. The
default and the assignment of every site's first choice are feasible.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from repfx_deploy.passes.protocol import Assignment, Pass, PassContext, PassResult, Prepared, finish
from repfx_deploy.passes.registry import register_pass
from repfx_deploy.passes.tokens.config import TokensConfig

if TYPE_CHECKING:
    import torch.nn as nn

log = logging.getLogger("repfx_deploy.passes.tokens")


@register_pass
class TokensPass(Pass[TokensConfig]):
    kind = "tokens"
    config_type = TokensConfig

    def prepare(self, module: nn.Module, config: TokensConfig, context: PassContext) -> Prepared[TokensConfig]:
        """Once per model and config (``core.prepare_tokens``): copy the model and patch its blocks (the
        adapters), check the patched copy is exact with every token kept, test whether the last block may keep
        the class token alone, count per-block MACs and search the schedule for a ``flops_reduction`` (the
        default), and build the space. Token scores are not cached: they are computed per input at run time."""
        from repfx_deploy.passes.tokens.core import prepare_tokens

        return prepare_tokens(module, config, context)

    def apply_assignment(self, prepared: Prepared[TokensConfig], assignment: Assignment) -> PassResult:
        """A copy of the prepared template with each block keeping its assigned count (``RecipeError`` for an
        unknown site, a choice a site does not offer, or counts that grow along depth); cheap: a deep copy and
        one attribute per block, then ``finish`` counts the result."""
        from repfx_deploy.passes.tokens.core import TokensPrepared, build

        started = time.perf_counter()
        if not isinstance(prepared, TokensPrepared):
            raise TypeError("the tokens pass applies assignments to what TokensPass.prepare returned")
        decisions = prepared.space.complete(assignment)
        keep = prepared.counts(decisions)
        module = build(prepared, keep)
        config = prepared.config
        extras: dict[str, Any] = {
            "method": config.method,
            "blocks": list(prepared.paths),
            "family": prepared.family,
            "tokens_in": prepared.tokens_in,
            "keep": list(keep),
            "cls_only_last": bool(keep[-1] == 1),
            "flops_reduction_target": config.flops_reduction,
        }
        result = finish(prepared, module, decisions, started, extras)
        reached = 1.0 - result.macs_after / max(result.macs_before, 1)
        result.extras["flops_reduction"] = round(reached, 4)
        if (
            keep == prepared.default_keep
            and prepared.searched_reduction is not None
            and abs(reached - prepared.searched_reduction) > 1e-9
        ):
            # the search summed per-block MACs; the whole-model count must agree, or the target was not what it seemed
            log.warning(
                "tokens: the searched schedule reaches %.4f by its per-block MACs but %.4f counted on the model; "
                "the reported figure is the model's",
                prepared.searched_reduction,
                reached,
            )
        log.info(
            "tokens: %s keep %s, MACs %d -> %d (-%.1f %%)",
            config.method,
            list(keep),
            result.macs_before,
            result.macs_after,
            100 * reached,
        )
        return result
