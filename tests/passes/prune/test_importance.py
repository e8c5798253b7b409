"""Importance: the weakest channels go first, by each criterion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TinyConvNet

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import DataError, RecipeError
from repfx_deploy.passes.prune import PruneConfig, prune

X = (torch.zeros(1, 3, 8, 8),)


def _model_with_weak_channels(weak=(1, 6)) -> TinyConvNet:
    torch.manual_seed(0)
    m = TinyConvNet().eval()
    with torch.no_grad():
        for c in weak:
            m.conv.weight[c] *= 1e-3
            m.fc.weight[:, c] *= 1e-3
            m.bn.weight[c] = 1e-3
    return m


def _kept_rows(model: TinyConvNet, pruned: TinyConvNet) -> set[int]:
    return {int(torch.cdist(row.flatten()[None], model.conv.weight.flatten(1)).argmin()) for row in pruned.conv.weight}


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale"])
def test_importance_removes_weakest_channels(criterion):
    model = _model_with_weak_channels()
    pruned = prune(model, X, PruneConfig(ratio=0.25, round_to=1, importance=criterion)).module
    assert pruned.conv.out_channels == 6
    assert _kept_rows(model, pruned) == {0, 2, 3, 4, 5, 7}


def test_taylor_importance_removes_channels_the_loss_does_not_use():
    model = _model_with_weak_channels()
    rng = np.random.default_rng(0)
    data = Dataset(x=rng.standard_normal((64, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 64), source="random")
    pruned = prune(
        model, X, PruneConfig(ratio=0.25, round_to=1, importance="taylor", taylor_batches=2), calibration=data
    ).module
    assert _kept_rows(model, pruned) == {0, 2, 3, 4, 5, 7}
    assert all(p.grad is None for p in model.parameters())


def test_taylor_importance_raises_recipe_error_without_calibration():
    with pytest.raises(RecipeError, match="calibration"):
        prune(TinyConvNet().eval(), X, PruneConfig(importance="taylor"))


def test_taylor_scores_raise_data_error_without_calibration():
    from repfx_deploy.passes.prune.graph import analyze
    from repfx_deploy.passes.prune.importance import class_scores

    model = TinyConvNet().eval()
    with pytest.raises(DataError, match="calibration"):
        class_scores(model, analyze(model, X), "taylor")
