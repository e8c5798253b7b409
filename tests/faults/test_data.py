"""Bad data is a DataError naming the file and the first bad sample, never a wrong figure or an internal error.

Each case runs through the CLI (exit 2, a message with the file and the fix) where a user would meet it, and
through the function that checks it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from repfx_deploy.data.datasets import Dataset, load_dataset
from repfx_deploy.data.preprocess import Preprocess
from repfx_deploy.errors import DataError
from repfx_deploy.pipeline.quality import EvalData, cross_entropy, score, top1_accuracy
from repfx_deploy.spec import InputSpec

RGB = InputSpec("input", (1, 3, 8, 8))


def _compress(tmp_path, state_dict, fixtures_dir, *data_args):
    from repfx_deploy.cli.app import app

    args = ["compress", state_dict, "--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir]
    args += ["--input-shape", "1,3,8,8", "-o", tmp_path / "out", "--json", *data_args]
    return CliRunner().invoke(app, [str(a) for a in args])


def _cli_error(result) -> dict:
    assert result.exit_code == 2, result.output
    assert "Internal error" not in result.output and "Traceback" not in result.output
    return json.loads(result.stdout)["error"]


def _samples(n=4, value=0.5):
    return np.full((n, 3, 8, 8), value, np.float32)


# -- the CLI: exit 2 and the file named, for every kind of bad data ------------------------------------------


def _strings(p):
    np.save(p / "d.npy", np.array([["a", "b"]] * 4))
    return p / "d.npy", ("holds strings", "d.npy")


def _zero_samples(p):
    np.savez(p / "d.npz", x=np.zeros((0, 3, 8, 8), np.float32), y=np.zeros(0, np.int64))
    return p / "d.npz", ("no samples", "d.npz")


def _no_images(p):
    (p / "imgs" / "cat" / "1.png").mkdir(parents=True)  # a folder named like an image is not one
    (p / "imgs" / "cat" / "notes.txt").write_text("not an image")
    return p / "imgs", ("No images found", "imgs")


def _zip_of_folders_only(p):
    import zipfile

    with zipfile.ZipFile(p / "d.zip", "w") as z:
        z.writestr("cat/", "")
        z.writestr("cat/1.png/", "")
    return p / "d.zip", ("No images found", "d.zip")


def _nan_input(p):
    x = _samples(8)
    x[5, 1, 2, 3] = np.nan
    np.savez(p / "d.npz", x=x, y=np.zeros(8, np.int64))
    return p / "d.npz", ("Sample 5", "nan")


def _inf_input(p):
    x = _samples(8)
    x[2, 0, 0, 0] = -np.inf
    np.save(p / "d.npy", x)
    return p / "d.npy", ("Sample 2", "inf")


def _label_past_classes(p):
    np.savez(p / "d.npz", x=_samples(8), y=np.array([0, 1, 2, 3, 0, 9, 1, 2]))  # TinyConvNet has 4 outputs
    return p / "d.npz", ("sample 5", "4 outputs")


def _negative_label(p):
    np.savez(p / "d.npz", x=_samples(4), y=np.array([0, 1, -1, 2]))
    return p / "d.npz", ("sample 2", "-1")


def _fractional_label(p):
    np.savez(p / "d.npz", x=_samples(4), y=np.array([0.0, 1.5, 2.0, 1.0]))
    return p / "d.npz", ("sample 1", "1.5")


def _string_labels(p):
    np.savez(p / "d.npz", x=_samples(4), y=np.array(["cat", "dog", "cat", "dog"]))
    return p / "d.npz", ("'y'", "strings")


@pytest.mark.parametrize(
    "make",
    [
        _strings,
        _zero_samples,
        _no_images,
        _zip_of_folders_only,
        _nan_input,
        _inf_input,
        _label_past_classes,
        _negative_label,
        _fractional_label,
        _string_labels,
    ],
)
def test_bad_eval_data_exits_2_naming_file_and_sample(tmp_path, tiny_state_dict, fixtures_dir, make):
    path, expected = make(tmp_path)
    error = _cli_error(_compress(tmp_path, tiny_state_dict, fixtures_dir, "--eval-data", path))
    assert error["type"] == "DataError" and error["fix"]
    for word in expected:
        assert word in error["problem"], error["problem"]
    assert not (tmp_path / "out").exists()


def test_nan_calibration_data_exits_2(tmp_path, tiny_state_dict, fixtures_dir):
    x = _samples(4)
    x[3, 2, 7, 7] = np.nan
    np.save(tmp_path / "c.npy", x)
    error = _cli_error(_compress(tmp_path, tiny_state_dict, fixtures_dir, "--calibration", tmp_path / "c.npy"))
    assert "Sample 3" in error["problem"] and "[2, 7, 7]" in error["problem"]


# -- the loader and the scorer --------------------------------------------------------------------------------


def test_nan_in_a_subset_is_reported_by_its_index_in_the_file(tmp_path):
    from repfx_deploy.data.datasets import _subset

    with_bad = next(s for s in range(100) if 77 in _subset(100, 10, s))
    without = next(s for s in range(100) if 77 not in _subset(100, 10, s))
    x = _samples(100)
    x[77, 0, 1, 1] = np.nan
    np.save(tmp_path / "d.npy", x)
    with pytest.raises(DataError, match=r"Sample 77 of .* holds nan at \[0, 1, 1\]"):
        load_dataset(tmp_path / "d.npy", RGB, Preprocess(), limit=10, seed=with_bad)
    ok = load_dataset(tmp_path / "d.npy", RGB, Preprocess(), limit=10, seed=without)  # only the kept ones matter
    assert len(ok) == 10 and 77 not in ok.positions


def test_npy_is_memory_mapped_so_a_subset_reads_only_its_samples(tmp_path):
    np.save(tmp_path / "d.npy", np.arange(50 * 192, dtype=np.float32).reshape(50, 3, 8, 8))
    ds = load_dataset(tmp_path / "d.npy", RGB, Preprocess(), limit=5, seed=3)
    assert len(ds) == 5 and not isinstance(ds.x, np.memmap)
    np.testing.assert_array_equal(ds.x[:, 0, 0, 0], ds.positions * 192)


def test_labels_of_n_by_1_shape_are_flattened(tmp_path):
    np.savez(tmp_path / "d.npz", x=_samples(4), y=np.array([[0], [1], [2], [3]]))
    assert load_dataset(tmp_path / "d.npz", RGB, Preprocess()).y.tolist() == [0, 1, 2, 3]


class _Fixed:
    """A runner returning fixed scores (one row per sample of each batch)."""

    name, threads = "fixed", 1

    def __init__(self, scores):
        self.scores, self.at = np.asarray(scores, np.float32), 0

    def run(self, inputs):
        n = len(inputs[0])
        out = self.scores[self.at : self.at + n]
        self.at += n
        return [out]


def test_nan_outputs_count_as_wrong_not_as_class_0():
    ds = Dataset(x=_samples(4), y=np.zeros(4, np.int64), source="mem")
    nan_scores = [[np.full((4, 3), np.nan, np.float32)]]
    assert top1_accuracy(nan_scores, ds, 4) == 0.0  # the arg-max of a NaN row is 0: it scored 1.0 before
    assert cross_entropy(nan_scores, ds) is None


def test_score_refuses_labels_past_the_models_outputs():
    ds = Dataset(x=_samples(4), y=np.array([0, 1, 3, 1]), source="eval.npz", positions=np.array([10, 11, 12, 13]))
    with pytest.raises(DataError, match=r"sample 12 in 'eval.npz' is 3, but the model has 3 outputs"):
        score(_Fixed(np.eye(4, 3)), EvalData(eval=ds, batch_size=4), (RGB,), "m")


def test_score_refuses_eval_data_smaller_than_one_batch():
    ds = Dataset(x=_samples(3), y=np.zeros(3, np.int64), source="eval.npz")
    with pytest.raises(DataError, match="fewer than one batch of 4"):
        score(_Fixed(np.eye(3)), EvalData(eval=ds, batch_size=4), (RGB,), "m")
