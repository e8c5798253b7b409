"""How many tokens each transformer block keeps, and how the others are chosen and removed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Method = Literal["zero-tprune", "merge"]
METHODS = ("zero-tprune", "merge")
Schedule = Literal["constant", "ratio"]
SCHEDULES = ("constant", "ratio")
HeadAggregation = Literal["mean", "rms"]
PagerankStart = Literal["uniform", "cls"]
Reduction = Literal["drop", "merge"]
ClsOnlyLast = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class TokensConfig:
    """Token reduction inside the transformer blocks of a ViT; static shapes throughout.

    Exactly one of ``flops_reduction`` and ``keep`` sets how many tokens survive:
      ``keep``: tokens (class token included) that leave each block, one count per block in model order; a
        block whose count equals its input count is left as it was. A count of 1 in the last block computes
        only the class token after attention (exact for models that read only the class token).
      ``flops_reduction``: the fraction of MACs to remove (0.35 = -35 %), counted on the patched model
        itself (``schedule.py``). The schedule removes tokens at ``layers`` (block indices; default: every
        block but the last) by the same count (``schedule = "constant"``, ToMe's) or keeps the same fraction
        (``"ratio"``) at each of them. ``tolerance`` is how far the reached reduction may be from the target.
    ``token_multiple``: searched schedules round every reduced count (class token included) to the nearest
      multiple of this; 8 or 16 keeps compiled attention kernels on whole vectors (TVM 0.27 ran the q k^T
      kernel 5-8x slower at 45, 51 or 58 tokens than at 48 or 65 on the CIFAR ViT). 1: no rounding.
    ``cls_only_last``: "auto" lets the last block compute only the class token when that leaves the model's
      output unchanged on a random input (a class-token classifier); "on" forces it, "off" never does it.

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

    method: Method = "zero-tprune"
    flops_reduction: float | None = None
    keep: tuple[int, ...] | None = None
    layers: tuple[int, ...] | None = None
    schedule: Schedule = "constant"
    tolerance: float = 0.02
    token_multiple: int = 1
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
            raise ValueError("set exactly one of flops_reduction (e.g. 0.35 for -35 % MACs) and keep (tokens kept per block)")
        if self.flops_reduction is not None and not 0.0 < float(self.flops_reduction) < 1.0:
            raise ValueError(f"flops_reduction is the fraction of MACs removed, in (0, 1); got {self.flops_reduction!r}")
        if self.keep is not None:
            object.__setattr__(self, "keep", tuple(self.keep))
            if not self.keep or not all(isinstance(k, int) and k >= 1 for k in self.keep):
                raise ValueError(f"keep holds one positive token count per block; got {self.keep!r}")
            if any(b > a for a, b in zip(self.keep, self.keep[1:])):
                raise ValueError(f"keep must not grow from one block to the next (tokens removed stay removed); got {self.keep!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
            if not self.layers or not all(isinstance(i, int) and i >= 0 for i in self.layers):
                raise ValueError(f"layers holds block indices (0 = first block); got {self.layers!r}")
        if not isinstance(self.token_multiple, int) or not 1 <= self.token_multiple <= 64:
            raise ValueError(f"token_multiple must be an integer in [1, 64]; got {self.token_multiple!r}")
        if self.token_multiple > 1 and self.keep is not None:
            raise ValueError("token_multiple rounds a searched schedule (flops_reduction); with keep, give the rounded counts yourself")
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
