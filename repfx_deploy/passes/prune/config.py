"""What to prune and by how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Importance = Literal["l1", "l2", "bn_scale", "taylor"]
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")


@dataclass(frozen=True)
class PruneConfig:
    """How much of which layers to remove.

    ``ratio``: the fraction of channels removed from every group of coupled channels (0.5 halves widths, which
    cuts a conv's MACs to about a quarter, since both its inputs and outputs shrink). ``macs_ratio``, when set,
    is the fraction of MACs to keep: the global ratio is then searched (bisection) to reach it, and ``ratio`` is
    ignored. ``layer_ratios`` fixes the ratio of the groups produced by layers matching a name pattern
    (``fnmatch`` globs or module prefixes, first match wins); these are the knobs a later search drives.
    ``round_to`` keeps every pruned width a multiple of it (vector lanes); None takes the target profile's
    ``channel_multiple``. ``ignore``: layers left whole (their output channels are kept; an unknown layer in
    it is traced as one opaque call). The model's outputs (the classifier) are always kept whole.
    ``taylor_batches`` batches of ``taylor_batch_size`` calibration samples estimate the Taylor importance.
    ``refine`` (with ``macs_ratio``): after the global ratio is found, give channels back group by group, most
    important per MAC first, while the MACs stay under the target, so the result lands close to it rather than
    on the first uniform step below it.
    """

    ratio: float = 0.5
    macs_ratio: float | None = None
    layer_ratios: tuple[tuple[str, float], ...] = ()
    importance: Importance = "l2"
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    max_ratio: float = 0.9
    taylor_batches: int = 8
    taylor_batch_size: int = 32
    refine: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio is the fraction of channels removed, in [0, 1); got {self.ratio}")
        if self.macs_ratio is not None and not 0.0 < self.macs_ratio <= 1.0:
            raise ValueError(f"macs_ratio is the fraction of MACs kept, in (0, 1]; got {self.macs_ratio}")
        if isinstance(self.layer_ratios, dict):
            object.__setattr__(self, "layer_ratios", tuple(self.layer_ratios.items()))
        for pattern, r in self.layer_ratios:
            if not isinstance(pattern, str) or not 0.0 <= float(r) < 1.0:
                raise ValueError(f"layer_ratios maps a layer name pattern to a fraction in [0, 1); got {pattern!r}: {r!r}")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}; got {self.importance!r}")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ValueError(f"round_to must be a positive integer; got {self.round_to!r}")
        if isinstance(self.ignore, (list, str)):
            object.__setattr__(self, "ignore", (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore))
        if not all(isinstance(p, str) and p for p in self.ignore):
            raise ValueError(f"ignore holds layer name patterns; got {self.ignore!r}")
        if not 0.0 < self.max_ratio < 1.0:
            raise ValueError(f"max_ratio must be in (0, 1); got {self.max_ratio}")
        if self.taylor_batches < 1 or self.taylor_batch_size < 1:
            raise ValueError("taylor_batches and taylor_batch_size must be >= 1")
