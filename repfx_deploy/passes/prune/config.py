"""The prune pass's config: what to prune and by how much (every field is a recipe key of ``kind = "prune"``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from repfx_deploy.passes.protocol import Assignment, PassConfig

Importance = Literal["l1", "l2", "bn_scale", "taylor"]
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")


@dataclass(frozen=True)
class PruneConfig(PassConfig):
    """How much of which layers to remove.

    ``ratio``: the fraction of channels removed from every group of coupled channels (0.5 halves widths, which
    cuts a conv's MACs to about a quarter, since both its inputs and outputs shrink). ``macs_ratio``, when set,
    is the fraction of MACs to keep: the global ratio is then searched (bisection) to reach it, and ``ratio`` is
    ignored. ``layer_ratios`` fixes the ratio of the groups produced by layers matching a name pattern
    (``fnmatch`` globs or module prefixes, first match wins). ``channels`` fixes the channels *kept* by a site
    (a group, named by the layer that produces it, as the pass's space and report name it); it wins over
    ``layer_ratios`` and ``ratio``/``macs_ratio`` for those sites, and is what ``with_assignment`` sets.
    ``round_to`` keeps every pruned width a multiple of it (vector lanes); None takes the target profile's
    ``channel_multiple``. ``ignore``: layers left whole (their output channels are kept; an unknown layer in
    it is traced as one opaque call). The model's outputs (the classifier) are always kept whole.
    ``max_ratio``: no group loses more than this fraction. ``refine`` (with ``macs_ratio``): after the global
    ratio is found, give channels back group by group, most important per MAC first, while the MACs stay under
    the target, so the result lands close to it rather than on the first uniform step below it.
    ``taylor_batches`` batches of ``taylor_batch_size`` calibration samples estimate the Taylor importance.
    ``bn_recalibrate``: re-estimate BatchNorm statistics of the pruned model on ``bn_batches`` batches of the
    calibration set (cheap, no labels; skipped with a warning when there is no calibration data).
    Fine-tuning is the ``recover`` pass's job.
    """

    kind = "prune"

    ratio: float = 0.5
    macs_ratio: float | None = None
    layer_ratios: tuple[tuple[str, float], ...] = ()
    channels: tuple[tuple[str, int], ...] = ()
    importance: Importance = "l2"
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    max_ratio: float = 0.9
    refine: bool = True
    taylor_batches: int = 8
    taylor_batch_size: int = 32
    bn_recalibrate: bool = True
    bn_batches: int = 32

    def __post_init__(self) -> None:
        # Python callers may pass a dict or a list; the recipe parser already gives tuples
        for name in ("layer_ratios", "channels"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, tuple(value.items()))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(tuple(v) for v in value))
        if isinstance(self.ignore, list):
            object.__setattr__(self, "ignore", tuple(self.ignore))
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio is the fraction of channels removed, in [0, 1); got {self.ratio}")
        if self.macs_ratio is not None and not 0.0 < self.macs_ratio <= 1.0:
            raise ValueError(f"macs_ratio is the fraction of MACs kept, in (0, 1]; got {self.macs_ratio}")
        for pattern, r in self.layer_ratios:
            if not isinstance(pattern, str) or not pattern or _bad_number(r) or not 0.0 <= float(r) < 1.0:
                raise ValueError(
                    f"layer_ratios maps a layer name pattern to a fraction removed in [0, 1); got {pattern!r} = {r!r}"
                )
        names = [name for name, _ in self.channels]
        for name, kept in self.channels:
            if not isinstance(name, str) or not name or isinstance(kept, bool) or not isinstance(kept, int) or kept < 1:
                raise ValueError(
                    f"channels maps a site (layer name) to the channels it keeps, an integer >= 1; got {name!r} = {kept!r}"
                )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"channels names each site once; repeated: {repeated}")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}; got {self.importance!r}")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise ValueError(
                f"round_to must be a positive integer (or left out for the target's channel_multiple); got {self.round_to!r}"
            )
        if not isinstance(self.ignore, tuple) or not all(isinstance(p, str) and p for p in self.ignore):
            raise ValueError(f'ignore is a list of layer name patterns, e.g. ["fc"]; got {self.ignore!r}')
        if not 0.0 < self.max_ratio < 1.0:
            raise ValueError(f"max_ratio is the largest fraction of a group removed, in (0, 1); got {self.max_ratio}")
        if self.taylor_batches < 1 or self.taylor_batch_size < 1:
            raise ValueError(
                f"taylor_batches and taylor_batch_size must be >= 1; got {self.taylor_batches}, {self.taylor_batch_size}"
            )
        if self.bn_batches < 1:
            raise ValueError(f"bn_batches must be >= 1; got {self.bn_batches}")

    def with_assignment(self, assignment: Assignment) -> PruneConfig:
        """This config with ``channels`` set to ``assignment`` (site -> channels kept), which then decides
        every site; the other keys stay, for the record (they no longer change a site that ``channels`` sets)."""
        return replace(self, channels=tuple((name, int(kept)) for name, kept in assignment.items()))


def _bad_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, float))
