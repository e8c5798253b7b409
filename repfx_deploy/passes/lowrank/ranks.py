"""Choosing each layer's rank: by an energy threshold, or by spending a global parameter/MACs budget where it
costs the least.

A layer's choices are ``Option``s: keep it dense (cost = its dense cost, loss 0) or factorize it with a scheme at
a rank (cheaper, some loss). The loss is either the fraction of the matrix's energy (sum of squared singular
values) that truncation discards, or a measured output error (``sensitivity.py``). Only ranks at which the pair
costs fewer parameters *and* fewer MACs than the dense layer are offered, so a layer that cannot get cheaper is
left alone.

``allocate`` meets a budget greedily: every layer's options are reduced to their lower convex hull in
(cost, loss), and the step with the smallest loss per unit of cost saved is taken until the budget is met. On
convex hulls this greedy order is optimal for the fractional problem (the classic marginal-analysis argument),
and each layer ends on one of its real options.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import torch

from repfx_deploy.passes.lowrank.factorize import LayerShape, Scheme

Cost = Literal["params", "macs"]


@dataclass(frozen=True)
class Option:
    """One way to build a layer: ``scheme`` None means dense."""

    scheme: Scheme | None
    rank: int
    params: int
    macs: int
    loss: float

    def cost(self, kind: Cost) -> int:
        return self.params if kind == "params" else self.macs


def energy_rank(singular: torch.Tensor, energy: float) -> int:
    """The smallest rank keeping at least ``energy`` of the squared singular values' sum (at least 1)."""
    sq = singular.double() ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12).item()) + 1


def discarded_energy(singular: torch.Tensor) -> torch.Tensor:
    """``out[r]`` = fraction of energy lost keeping rank ``r`` (index 0..full rank)."""
    sq = singular.double() ** 2
    total = float(sq.sum()) or 1.0
    tail = torch.flip(torch.cumsum(torch.flip(sq, (0,)), 0), (0,)) / total  # tail[i] = sum_{j >= i}
    return torch.cat([tail, tail.new_zeros(1)])


def candidate_ranks(shape: LayerShape, scheme: Scheme, round_to: int) -> list[int]:
    """Ranks worth offering: multiples of ``round_to`` (and ``round_to`` itself) up to the largest useful rank."""
    top = shape.max_useful_rank(scheme)
    return [r for r in range(round_to, top + 1, round_to)]


def dense_option(shape: LayerShape) -> Option:
    return Option(None, 0, shape.dense_params(), shape.dense_macs(), 0.0)


def energy_options(shape: LayerShape, spectra: dict[Scheme, torch.Tensor], round_to: int) -> list[Option]:
    """Dense plus every candidate rank of every scheme, the loss being the discarded energy fraction."""
    out = [dense_option(shape)]
    for scheme, s in spectra.items():
        lost = discarded_energy(s)
        for r in candidate_ranks(shape, scheme, round_to):
            out.append(Option(scheme, r, shape.params(scheme, r), shape.macs(scheme, r), float(lost[r])))
    return out


def lower_hull(options: list[Option], kind: Cost) -> list[Option]:
    """The options on the lower convex hull of (cost, loss), from the most to the least costly (dense first)."""
    best: dict[int, Option] = {}
    for o in options:  # one option per cost: the least lossy
        c = o.cost(kind)
        if c not in best or o.loss < best[c].loss:
            best[c] = o
    pts = sorted(best.values(), key=lambda o: -o.cost(kind))
    hull: list[Option] = []
    for o in pts:
        # moving to cheaper options, loss per cost saved must not decrease (convex from dense outwards)
        while hull and o.loss <= hull[-1].loss:
            hull.pop()  # a cheaper option that loses no more dominates
        while len(hull) >= 2 and _slope(hull[-2], hull[-1], kind) >= _slope(hull[-2], o, kind):
            hull.pop()
        hull.append(o)
    return hull


def _slope(a: Option, b: Option, kind: Cost) -> float:
    """Loss gained per unit of cost saved going from ``a`` to the cheaper ``b``."""
    return (b.loss - a.loss) / max(a.cost(kind) - b.cost(kind), 1e-12)


def allocate(layers: dict[str, list[Option]], kind: Cost, must_save: int) -> dict[str, Option]:
    """One option per layer saving at least ``must_save`` of ``kind`` against every layer's first option,
    at the least total loss (greedy on convex hulls); ``ValueError`` when even the cheapest options fall short."""
    hulls = {name: lower_hull(opts, kind) for name, opts in layers.items()}
    at = {name: 0 for name in hulls}
    start = {name: opts[0].cost(kind) for name, opts in layers.items()}
    heap = [(_slope(h[0], h[1], kind), name) for name, h in hulls.items() if len(h) > 1]
    heapq.heapify(heap)
    saved = sum(start[n] - hulls[n][0].cost(kind) for n in hulls)
    while saved < must_save:
        if not heap:
            raise ValueError(
                f"the budget needs {must_save} fewer {kind} but factorizing every layer at its lowest rank saves {saved}"
            )
        _, name = heapq.heappop(heap)
        h, i = hulls[name], at[name]
        saved += h[i].cost(kind) - h[i + 1].cost(kind)
        at[name] = i + 1
        if i + 2 < len(h):
            heapq.heappush(heap, (_slope(h[i + 1], h[i + 2], kind), name))
    return {name: hulls[name][i] for name, i in at.items()}
