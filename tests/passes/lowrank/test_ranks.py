"""Rank choice: energy thresholds, convex hulls, and the greedy budget allocation."""

from __future__ import annotations

import itertools

import pytest
import torch

from repfx_deploy.passes.lowrank.ranks import (
    Option,
    allocate,
    discarded_energy,
    energy_rank,
    lower_hull,
)


def test_energy_rank_is_smallest_rank_reaching_threshold():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.7) == 2
    assert energy_rank(s, 0.99) == 3
    assert energy_rank(torch.zeros(3), 0.9) == 1


def test_discarded_energy_runs_from_one_to_zero():
    lost = discarded_energy(torch.tensor([2.0, 1.0]))
    assert lost.tolist() == pytest.approx([1.0, 0.2, 0.0])


def _opt(cost: int, loss: float) -> Option:
    return Option("linear", cost, cost, cost, loss)


def test_lower_hull_drops_points_above_the_hull_and_dominated_points():
    dense, a, above, b, cheapest = _opt(100, 0.0), _opt(80, 0.1), _opt(60, 0.5), _opt(40, 0.6), _opt(30, 0.6)
    hull = lower_hull([dense, a, above, b, cheapest], "params")
    assert hull == [
        dense,
        a,
        cheapest,
    ]  # "above" lies over the a -> cheapest segment; "b" loses as much as "cheapest" for more cost


def test_allocate_matches_brute_force_on_convex_layers():
    layers = {
        "a": [_opt(100, 0.0), _opt(70, 0.05), _opt(40, 0.2), _opt(20, 0.6)],
        "b": [_opt(50, 0.0), _opt(30, 0.01), _opt(10, 0.3)],
        "c": [_opt(80, 0.0), _opt(60, 0.2), _opt(30, 0.25)],
    }
    must = 90
    chosen = allocate(layers, "params", must)
    saved = sum(opts[0].params - chosen[n].params for n, opts in layers.items())
    assert saved >= must
    best = min(
        sum(o.loss for o in combo)
        for combo in itertools.product(*layers.values())
        if sum(layers[n][0].params - o.params for n, o in zip(layers, combo)) >= must
    )
    # greedy on hulls is optimal for the fractional problem: within one step of the integer optimum here
    assert sum(o.loss for o in chosen.values()) <= best + 0.2


def test_allocate_keeps_everything_dense_when_nothing_must_be_saved():
    layers = {"a": [_opt(100, 0.0), _opt(50, 0.1)]}
    assert allocate(layers, "params", 0)["a"].params == 100


def test_allocate_raises_value_error_when_budget_unreachable():
    with pytest.raises(ValueError, match="lowest rank"):
        allocate({"a": [_opt(100, 0.0), _opt(50, 0.1)]}, "params", 60)
