"""Load calibration and evaluation data: ``.npz``/``.npy`` arrays, image folders, zip archives of images.

Image folders and archives use the class-folder layout (``<class>/<image>`` at any depth, classes sorted by
name give the labels), as torchvision's ImageFolder does. Reading is bounded (``limits``: how many files, how
many bytes, how many pixels, each raisable by an environment variable) and checked (``validate``: no empty or
non-numeric data, no NaN or infinite inputs, no negative labels), each failure a ``DataError`` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repfx_deploy.data.arrays import read_arrays
from repfx_deploy.data.images import read_images
from repfx_deploy.data.limits import DataLimits
from repfx_deploy.data.preprocess import Preprocess
from repfx_deploy.data.validate import check_finite, check_samples
from repfx_deploy.errors import DataError
from repfx_deploy.spec import InputSpec


@dataclass(frozen=True)
class Dataset:
    """Model-ready samples ``x`` (float32, N x sample shape) and optional integer labels ``y``.

    ``positions``: each sample's index in the file it came from (``None``: 0 .. N-1), for messages about a
    subset.
    """

    x: np.ndarray
    y: np.ndarray | None
    source: str
    positions: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def labeled(self) -> bool:
        return self.y is not None

    def batches(self, batch_size: int) -> list[np.ndarray]:
        """Consecutive batches of exactly ``batch_size`` (static-shape artifacts take no other); a remainder is dropped."""
        n = len(self) // batch_size * batch_size
        return [self.x[i : i + batch_size] for i in range(0, n, batch_size)]


def load_dataset(
    path: Path,
    spec: InputSpec,
    preprocess: Preprocess,
    *,
    limit: int | None = None,
    seed: int = 0,
    limits: DataLimits | None = None,
) -> Dataset:
    """Load ``path`` and shape it for an input of ``spec`` (batch dimension excluded).

    ``limit`` keeps a random subset (seeded), since data sets are often stored ordered by class; only that
    subset is decoded. ``limits`` bounds what reading may decompress (default: ``DataLimits.from_env()``).
    """
    path = Path(path)
    limits = limits or DataLimits.from_env()
    source = str(path)
    if not path.exists():
        raise DataError(
            f"The data path {source!r} does not exist.",
            "Check the --calibration/--eval-data path or the recipe's [data] table.",
        )
    y: np.ndarray | None
    if path.is_dir() or path.suffix == ".zip":
        # images are chosen before they are decoded: a 50,000-image archive need not be read for 256 samples
        channels = spec.shape[1] if len(spec.shape) == 4 and spec.shape[1] in (1, 3) else spec.shape[-1]
        images = read_images(
            path,
            "L" if channels == 1 else "RGB",
            preprocess.size,
            choose=lambda n: _subset(n, limit, seed),
            limits=limits,
        )
        x, y, positions = preprocess.apply(images.pixels), images.labels, images.positions
    elif path.suffix in (".npz", ".npy"):
        raw, y = read_arrays(path, limits)
        y = check_samples(raw, y, source)
        positions = _subset(len(raw), limit, seed)
        # a fancy index copies just the kept samples (a memory-mapped .npy is read no further)
        x = np.asarray(raw[positions])
        y = y[positions] if y is not None else None
        if spec.dtype.startswith("int") and np.issubdtype(x.dtype, np.integer):
            x = x.astype(spec.dtype, copy=False)  # token ids stay ids (a Hugging Face model's input_ids)
        else:
            if x.dtype == np.uint8:
                x = preprocess.apply(x)
            x = x.astype(np.float32, copy=False)
    else:
        raise DataError(
            f"Cannot read data from {source!r}.",
            "Use a .npz/.npy file (array x, optional y), an image folder or a .zip of class folders.",
        )
    expected = tuple(spec.shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise DataError(
            f"Samples from {source!r} have shape {tuple(x.shape[1:])} after preprocessing, "
            f"but the model input {spec.name!r} takes {expected}.",
            "Set [data.preprocess] size and layout in the recipe to match the model (or store preprocessed float arrays).",
        )
    check_finite(x, source, positions)
    whole = not len(positions) or len(positions) == positions[-1] + 1  # every sample in order: no map needed
    return Dataset(x=np.ascontiguousarray(x), y=y, source=source, positions=None if whole else positions)


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``limit`` out of ``n`` (all when ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
