import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from repfx_deploy.data.datasets import load_dataset
from repfx_deploy.data.preprocess import Preprocess
from repfx_deploy.errors import DataError
from repfx_deploy.spec import InputSpec

GRAY = InputSpec("input", (1, 1, 8, 8))
RGB = InputSpec("input", (1, 3, 8, 8))


def test_uint8_npz_preprocessed_with_mean_std(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.full((4, 8, 8), 255, np.uint8), y=np.arange(4))
    ds = load_dataset(path, GRAY, Preprocess(mean=(0.5,), std=(0.25,)))
    assert ds.x.shape == (4, 1, 8, 8) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x, 2.0)
    assert ds.labeled and list(ds.y) == [0, 1, 2, 3]


def test_uint8_npz_resized_when_size_differs(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 4, 4), np.uint8))
    ds = load_dataset(path, GRAY, Preprocess(size=8))
    assert ds.x.shape == (2, 1, 8, 8) and not ds.labeled


def test_float_npy_taken_as_preprocessed(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.ones((3, 3, 8, 8), np.float32) * 7)
    ds = load_dataset(path, RGB, Preprocess())
    np.testing.assert_allclose(ds.x, 7.0)


def _png(color, size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_labels_from_sorted_class_folders(tmp_path):
    for cls, color in (("cat", (255, 0, 0)), ("ant", (0, 255, 0))):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        (tmp_path / "imgs" / cls / "a.png").write_bytes(_png(color))
    ds = load_dataset(tmp_path / "imgs", RGB, Preprocess())
    assert ds.x.shape == (2, 3, 8, 8)
    assert sorted(ds.y.tolist()) == [0, 1]
    ant = ds.x[list(ds.y).index(0)]
    assert ant[1].mean() == pytest.approx(1.0) and ant[0].mean() == pytest.approx(0.0)


def test_zip_archive_read_and_resized(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("test/dog/1.png", _png((10, 10, 10), size=16))
        z.writestr("test/cat/1.png", _png((20, 20, 20), size=16))
    ds = load_dataset(path, RGB, Preprocess(size=8))
    assert ds.x.shape == (2, 3, 8, 8) and len(ds.y) == 2


def test_limit_takes_seeded_subset(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(100 * 64, dtype=np.float32).reshape(100, 1, 8, 8), y=np.arange(100))
    a = load_dataset(path, GRAY, Preprocess(), limit=10)
    b = load_dataset(path, GRAY, Preprocess(), limit=10)
    assert len(a) == 10 and list(a.y) == list(b.y)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: np.savez(p / "d.npz", images=np.zeros((2, 8, 8), np.uint8)), "no 'x'"),
        (lambda p: np.savez(p / "d.npz", x=np.zeros((2, 5, 5), np.float32)), "takes"),
        (lambda p: np.savez(p / "d.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.zeros(3)), "labels"),
        (lambda p: np.savez(p / "d.npz", x=np.array([object()], dtype=object)), "Cannot read"),
    ],
)
def test_bad_data_refused_with_clear_error(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "d.npz", GRAY, Preprocess())


def test_missing_path_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope.npz", GRAY, Preprocess())


def test_batches_drop_remainder_for_static_batch():
    from repfx_deploy.data.datasets import Dataset

    ds = Dataset(x=np.zeros((7, 1, 2, 2), np.float32), y=None, source="mem")
    assert [b.shape[0] for b in ds.batches(3)] == [3, 3]


def test_zip_limit_decodes_only_the_chosen_images(tmp_path, monkeypatch):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(30):
            z.writestr(f"c{i % 3}/{i}.png", _png((i, i, i)))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    ds = load_dataset(path, RGB, Preprocess(), limit=4, seed=1)
    assert len(ds) == 4 and len(opened) == 4
    assert set(ds.y.tolist()) <= {0, 1, 2}
