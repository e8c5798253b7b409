"""The recipe's ``kind = "tokens"`` config: how many tokens each transformer block keeps, and how the others are
chosen and removed. Parsed by the generic recipe parser (``repfx_deploy.options``) from its annotations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.protocol import Assignment, PassConfig

Method = Literal["zero-tprune", "merge"]
METHODS = ("zero-tprune", "merge")
Schedule = Literal["constant", "ratio"]
SCHEDULES = ("constant", "ratio")
HeadAggregation = Literal["mean", "rms"]
PagerankStart = Literal["uniform", "cls"]
Reduction = Literal["drop", "merge"]
ClsOnlyLast = Literal["auto", "on", "off"]
# tokens kept per block: by block name ({"blocks.3" = 33}, what with_assignment writes) or one count per block
Keep = tuple[tuple[str, int], ...] | tuple[int, ...]


@dataclass(frozen=True)
class TokensConfig(PassConfig):
    """Token reduction inside the transformer blocks of a ViT; static shapes throughout.

    Every count is of the tokens that *leave* a block, the class token included (a count of 17 on a 16-patch
    model keeps every token). Exactly one of ``flops_reduction`` and ``keep`` sets the counts:
      ``keep``: exact counts, either one per block in model order (``keep = [58, 51, 44, 37, 30, 1]``) or a
        table by block name (``keep = {"blocks.3" = 33, "blocks.5" = 1}``), where a block left out keeps every
        token it receives. A block whose count equals its input count is left as it was. Counts must not grow
        along depth (tokens removed stay removed). A count of 1 in the last block computes only the class token
        after attention (exact for models that read only the class token).
      ``flops_reduction``: the fraction of MACs to remove (0.35 = -35 %), counted on the patched model
        itself (``schedule.py``). The schedule removes tokens at ``layers`` (block indices; default: every
        block but the last) by the same count (``schedule = "constant"``, ToMe's) or keeps the same fraction
        (``"ratio"``) at each of them. ``tolerance`` is how far the reached reduction may be from the target.
    ``token_multiple``: the searched schedule rounds every reduced count to the nearest multiple of this, and
      the search space's choices are multiples of it; 8 or 16 keeps compiled attention kernels on whole vectors
      (TVM 0.27 ran the q k^T kernel 5-8x slower at 45, 51 or 58 tokens than at 48 or 65 on the CIFAR ViT).
      Unset: the search does not round, and the space's choices are multiples of the target's
      ``channel_multiple``. 1: no rounding, choices in steps of one token (thinned).
    ``cls_only_last``: "auto" lets the last block compute only the class token when that leaves the model's
      output unchanged on a random input (a class-token classifier); "on" forces it, "off" never does it in a
      searched schedule (and the space's last site offers 1 only under "auto" on such a model, or "on").

    Zero-TPrune (``method = "zero-tprune"``): token importance is a weighted PageRank over each head's attention
    graph (``pagerank_iterations``), aggregated over heads by ``head_aggregation`` ("mean", or "rms", which
    emphasises heads that concentrate on few tokens), starting from every token (``pagerank_start = "uniform"``, the paper's) or
    from the class token (``"cls"``). The ``candidate_factor`` x R least important tokens are candidates; of
    them the R most similar (cosine of attention keys) to a surely-kept token are removed: dropped, or merged
    into that token (``reduction``). ``candidate_factor = 1`` is pure importance pruning. The defaults (mean,
    merge) scored best zero-shot on the CIFAR-10 ViT (benchmarks/tokens_vit.py; README).
    Token merging (``method = "merge"``): ToMe's bipartite soft matching on the attention keys; at most half
    of the patch tokens can go in one block.
    The class token is never removed by either method.
    """

    kind = "tokens"

    method: Method = "zero-tprune"
    flops_reduction: float | None = None
    keep: Keep | None = None
    layers: tuple[int, ...] | None = None
    schedule: Schedule = "constant"
    tolerance: float = 0.02
    token_multiple: int | None = None
    cls_only_last: ClsOnlyLast = "auto"
    pagerank_iterations: int = 5
    head_aggregation: HeadAggregation = "mean"
    pagerank_start: PagerankStart = "uniform"
    candidate_factor: float = 2.0
    reduction: Reduction = "merge"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if (self.flops_reduction is None) == (self.keep is None):
            raise ValueError(
                "set exactly one of flops_reduction (e.g. 0.35 for -35 % MACs) and keep (tokens kept per block)"
            )
        if self.flops_reduction is not None and not 0.0 < float(self.flops_reduction) < 1.0:
            raise ValueError(
                f"flops_reduction is the fraction of MACs removed, in (0, 1); got {self.flops_reduction!r}"
            )
        if self.keep is not None:
            self._check_keep(self.keep)
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
            if not self.layers or not all(isinstance(i, int) and i >= 0 for i in self.layers):
                raise ValueError(f"layers holds block indices (0 = first block); got {self.layers!r}")
        if self.token_multiple is not None and (
            not isinstance(self.token_multiple, int) or not 1 <= self.token_multiple <= 64
        ):
            raise ValueError(f"token_multiple must be an integer in [1, 64]; got {self.token_multiple!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if not 0.0 < self.tolerance < 0.5:
            raise ValueError(f"tolerance is a fraction of MACs in (0, 0.5); got {self.tolerance!r}")
        if self.cls_only_last not in ("auto", "on", "off"):
            raise ValueError(f"cls_only_last must be auto, on or off; got {self.cls_only_last!r}")
        if not isinstance(self.pagerank_iterations, int) or not 1 <= self.pagerank_iterations <= 100:
            raise ValueError(f"pagerank_iterations must be an integer in [1, 100]; got {self.pagerank_iterations!r}")
        if self.head_aggregation not in ("mean", "rms"):
            raise ValueError(f"head_aggregation must be mean or rms; got {self.head_aggregation!r}")
        if self.pagerank_start not in ("uniform", "cls"):
            raise ValueError(f"pagerank_start must be uniform or cls; got {self.pagerank_start!r}")
        if not 1.0 <= float(self.candidate_factor) <= 8.0:
            raise ValueError(f"candidate_factor must be in [1, 8]; got {self.candidate_factor!r}")
        if self.reduction not in ("drop", "merge"):
            raise ValueError(f"reduction must be drop or merge; got {self.reduction!r}")

    def _check_keep(self, given: Any) -> None:
        # a dict (a caller in Python) is accepted as the by-name form and stored as pairs, so the config hashes
        keep: tuple[Any, ...] = tuple(given.items()) if isinstance(given, Mapping) else tuple(given)
        object.__setattr__(self, "keep", keep)
        if not keep:
            raise ValueError(
                "keep holds tokens kept per block (a list, one per block, or a table by block name); got an empty one"
            )
        if all(isinstance(k, tuple) for k in keep):
            bad = [k for k in keep if len(k) != 2 or not isinstance(k[0], str) or not _count(k[1])]
            if bad:
                raise ValueError(f"keep by block name maps each name to a positive token count; got {list(keep)!r}")
            names = [k[0] for k in keep]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"keep names block(s) {dupes} more than once")
            return
        if not all(_count(k) for k in keep):
            raise ValueError(
                f"keep holds one positive token count per block (or a table by block name); got {list(keep)!r}"
            )
        if any(b > a for a, b in zip(keep, keep[1:])):
            raise ValueError(
                f"keep must not grow from one block to the next (tokens removed stay removed); got {list(keep)!r}"
            )

    @property
    def keep_by_name(self) -> dict[str, int] | None:
        """``keep`` as a table by block name, or None when it is positional (or unset)."""
        pairs: tuple[Any, ...] = self.keep or ()
        if pairs and all(isinstance(k, tuple) for k in pairs):
            return {name: count for name, count in pairs}
        return None

    @property
    def keep_counts(self) -> tuple[int, ...] | None:
        """``keep`` when it is one count per block, or None (by name, or unset)."""
        counts: tuple[Any, ...] = self.keep or ()
        return counts if counts and not any(isinstance(k, tuple) for k in counts) else None

    def with_assignment(self, assignment: Assignment) -> TokensConfig:
        """This config with ``keep`` set to ``assignment`` (tokens kept by block name: the complete assignment
        ``SearchSpace.complete`` gives) and no FLOPs target; the method's options are kept as they are."""
        bad = {name: count for name, count in assignment.items() if not _count(count)}
        if bad:
            raise RecipeError(
                f"The tokens pass counts tokens kept per block (positive integers); got {bad}.",
                "Use choices of the pass's space.",
            )
        if not assignment:
            raise RecipeError(
                "The tokens pass needs an assignment of every block.", "Pass SearchSpace.complete(assignment)."
            )
        return replace(self, keep=tuple((name, int(count)) for name, count in assignment.items()), flops_reduction=None)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
