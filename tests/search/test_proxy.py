"""The search's proxy data: a BatchNorm split and a held-out split of training data, seeded, disjoint, never eval."""

import numpy as np
import pytest

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import DataError
from repfx_deploy.pipeline.data import RecipeData
from repfx_deploy.search.proxy import MIN_BN, MIN_HOLDOUT, ProxyData, positions


def _data(n: int, source: str, *, labeled: bool = True) -> Dataset:
    rng = np.random.default_rng(n)
    return Dataset(
        x=rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
        y=rng.integers(0, 10, n) if labeled else None,
        source=source,
    )


def test_splits_are_disjoint_sized_and_from_train():
    train = _data(1000, "train.npz")
    proxy = ProxyData.from_recipe_data(RecipeData(_data(64, "calib.npz"), _data(100, "eval.npz"), train), 256, 512)
    assert proxy.pool == "train" and len(proxy.bn) == 256 and len(proxy.holdout) == 512
    assert not set(positions(proxy.bn)) & set(positions(proxy.holdout))
    assert proxy.holdout.source == "train.npz" and proxy.holdout.y is not None
    # the split samples are the train samples at those positions
    assert np.array_equal(proxy.holdout.x, train.x[positions(proxy.holdout)])
    assert np.array_equal(proxy.holdout.y, train.y[positions(proxy.holdout)])


def test_same_seed_gives_the_same_splits_and_another_seed_others():
    data = RecipeData(None, None, _data(800, "train.npz"))
    a, b = ProxyData.from_recipe_data(data, 100, 200, seed=3), ProxyData.from_recipe_data(data, 100, 200, seed=3)
    other = ProxyData.from_recipe_data(data, 100, 200, seed=4)
    assert np.array_equal(positions(a.holdout), positions(b.holdout))
    assert np.array_equal(positions(a.bn), positions(b.bn))
    assert not np.array_equal(positions(a.holdout), positions(other.holdout))


def test_calibration_is_the_pool_when_there_is_no_train_set():
    proxy = ProxyData.from_recipe_data(RecipeData(_data(300, "calib.npz"), None, None), 100, 200)
    assert proxy.pool == "calibration" and len(proxy.bn) + len(proxy.holdout) == 300


def test_unlabelled_train_falls_back_to_labelled_calibration():
    data = RecipeData(_data(300, "calib.npz"), None, _data(500, "train.npz", labeled=False))
    assert ProxyData.from_recipe_data(data, 100, 200).pool == "calibration"


def test_eval_samples_never_enter_the_splits_when_the_pool_is_the_eval_file():
    calibration = _data(400, "same.npz")  # positions 0..399 of the file
    evaluation = Dataset(calibration.x[100:200], calibration.y[100:200], "same.npz", positions=np.arange(100, 200))
    proxy = ProxyData.from_recipe_data(RecipeData(calibration, evaluation, None), 100, 200)
    used = set(positions(proxy.bn)) | set(positions(proxy.holdout))
    assert proxy.excluded_eval == 100 and not used & set(range(100, 200)) and len(used) == 300


def test_a_small_pool_shrinks_both_splits_in_proportion():
    proxy = ProxyData.from_recipe_data(RecipeData(None, None, _data(300, "train.npz")), 100, 200)
    assert (len(proxy.holdout), len(proxy.bn)) == (200, 100)
    smaller = ProxyData.from_recipe_data(RecipeData(None, None, _data(150, "train.npz")), 100, 200)
    assert (len(smaller.holdout), len(smaller.bn)) == (100, 50)


def test_too_little_labelled_data_is_a_data_error_naming_the_set():
    tiny = _data(MIN_HOLDOUT + MIN_BN - 1, "train.npz")
    with pytest.raises(DataError, match="train.npz"):
        ProxyData.from_recipe_data(RecipeData(None, None, tiny), 256, 512)


def test_no_labelled_data_at_all_is_a_data_error():
    unlabeled = RecipeData(_data(500, "calib.npz", labeled=False), None, None)
    with pytest.raises(DataError, match="no labels"):
        ProxyData.from_recipe_data(unlabeled)
    with pytest.raises(DataError, match="labelled"):
        ProxyData.from_recipe_data(RecipeData(None, _data(500, "eval.npz"), None))


def test_to_dict_reports_sizes_and_pool():
    proxy = ProxyData.from_recipe_data(RecipeData(None, None, _data(400, "train.npz")), 100, 200, seed=7)
    assert proxy.to_dict() == {
        "pool": "train",
        "source": "train.npz",
        "seed": 7,
        "bn_samples": 100,
        "holdout_samples": 200,
        "excluded_eval_samples": 0,
    }
