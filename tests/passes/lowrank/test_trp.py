"""Trained Rank Pruning's nuclear-norm penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lowrank_zoo import ConvBNNet, WideMLP

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.passes.lowrank.factorize import factorize
from repfx_deploy.passes.lowrank.trp import nuclear_norm, nuclear_penalty
from repfx_deploy.passes.recovery import FinetuneConfig, distill


def test_nuclear_norm_sums_singular_values_of_each_scheme_matrix():
    torch.manual_seed(0)
    model = ConvBNNet()
    got = nuclear_norm(model, {"conv2": "channel", "conv3": "spatial", "fc": "linear"})
    want = (
        torch.linalg.svdvals(model.conv2.weight.reshape(32, -1)).sum()
        + torch.linalg.svdvals(model.conv3.weight.permute(1, 2, 0, 3).reshape(96, 96)).sum()
        + torch.linalg.svdvals(model.fc.weight).sum()
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_nuclear_norm_of_factorized_pair_is_that_of_its_product():
    torch.manual_seed(0)
    model = WideMLP()
    dense = nuclear_norm(model, {"fc1": "linear"}).item()
    model.fc1 = factorize(model.fc1, "linear", 32)  # full rank: same matrix
    assert nuclear_norm(model, {"fc1": "linear"}).item() == pytest.approx(dense, rel=1e-4)


def test_penalty_in_distill_lowers_the_nuclear_norm():
    torch.manual_seed(0)
    teacher = WideMLP().eval()
    data = Dataset(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), None, "random")
    layers = {"fc1": "linear", "fc2": "linear"}
    runs = {}
    for weight in (None, 0.5):
        student = WideMLP()
        student.load_state_dict(teacher.state_dict())
        extra = nuclear_penalty(layers, weight) if weight else None
        distill(
            student,
            teacher,
            data,
            FinetuneConfig(steps=20, batch_size=16, lr=0.01, weight_decay=0.0, progress=False),
            extra_loss=extra,
        )
        runs[weight] = nuclear_norm(student, layers).item()
    assert runs[0.5] < 0.9 * runs[None]


def test_penalty_refuses_non_positive_weight():
    with pytest.raises(ValueError, match="weight"):
        nuclear_penalty({"fc1": "linear"}, 0.0)
