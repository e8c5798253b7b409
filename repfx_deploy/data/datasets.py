"""Load calibration and evaluation data: ``.npz``/``.npy`` arrays, image folders, zip archives of images.

Image folders and archives use the class-folder layout (``<class>/<image>`` at any depth, classes sorted by
name give the labels), as torchvision's ImageFolder does.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repfx_deploy.data.preprocess import Preprocess
from repfx_deploy.errors import DataError
from repfx_deploy.spec import InputSpec

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Dataset:
    """Model-ready samples ``x`` (float32, N x sample shape) and optional integer labels ``y``."""

    x: np.ndarray
    y: np.ndarray | None
    source: str

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
    path: Path, spec: InputSpec, preprocess: Preprocess, *, limit: int | None = None, seed: int = 0
) -> Dataset:
    """Load ``path`` and shape it for an input of ``spec`` (batch dimension excluded).

    ``limit`` keeps a random subset (seeded), since data sets are often stored ordered by class.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"The data path {str(path)!r} does not exist.",
            "Check the --calibration/--eval-data path or the recipe's [data] table.",
        )
    y: np.ndarray | None
    if path.is_dir() or path.suffix == ".zip":
        # images are chosen before they are decoded: a 50,000-image archive need not be read for 256 samples
        pixels, y = _read_images(path, spec, preprocess.size, limit=limit, seed=seed)
        x = preprocess.apply(pixels)
    elif path.suffix in (".npz", ".npy"):
        x, y = _read_arrays(path)
        if spec.dtype.startswith("int") and np.issubdtype(x.dtype, np.integer):
            x = x.astype(spec.dtype, copy=False)  # token ids stay ids (a Hugging Face model's input_ids)
        else:
            if x.dtype == np.uint8:
                x = preprocess.apply(x)
            x = x.astype(np.float32, copy=False)
    else:
        raise DataError(
            f"Cannot read data from {str(path)!r}.",
            "Use a .npz/.npy file (array x, optional y), an image folder or a .zip of class folders.",
        )
    expected = tuple(spec.shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise DataError(
            f"Samples from {str(path)!r} have shape {tuple(x.shape[1:])} after preprocessing, "
            f"but the model input {spec.name!r} takes {expected}.",
            "Set [data.preprocess] size and layout in the recipe to match the model (or store preprocessed float arrays).",
        )
    if y is not None and len(y) != len(x):
        raise DataError(f"{str(path)!r} has {len(x)} samples but {len(y)} labels.", "Store one label per sample.")
    if limit is not None and limit < len(x):
        idx = _subset(len(x), limit, seed)
        x, y = x[idx], (y[idx] if y is not None else None)
    return Dataset(x=np.ascontiguousarray(x), y=y, source=str(path))


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d:
                raise DataError(
                    f"{str(path)!r} has arrays {sorted(d.files)} but no 'x'.",
                    "Save the samples as x (and labels as y): np.savez(path, x=..., y=...).",
                )
            y = d["y"].astype(np.int64) if "y" in d else None
            return d["x"], y
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"Cannot read {str(path)!r} as numpy data: {e}", "Check the file; object arrays are refused for safety."
        ) from e


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``limit`` out of ``n`` (all when ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _read_images(
    path: Path, spec: InputSpec, size: int, *, limit: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode images from a folder or zip of class folders to uint8 arrays (gray or RGB as the model input
    needs), resized to ``size`` when given. Labels index the sorted class names of the whole set."""
    from PIL import Image, UnidentifiedImageError

    source = str(path)
    archive = None
    try:
        if path.is_dir():
            names = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        else:
            archive = zipfile.ZipFile(path)
            names = sorted(n for n in archive.namelist() if Path(n).suffix.lower() in _IMAGE_SUFFIXES)
        if not names:
            raise DataError(
                f"No images found in {source!r}.", f"Put images ({', '.join(_IMAGE_SUFFIXES)}) in one folder per class."
            )
        classes = sorted({Path(n).parent.name for n in names})
        channels = spec.shape[1] if len(spec.shape) == 4 and spec.shape[1] in (1, 3) else spec.shape[-1]
        mode = "L" if channels == 1 else "RGB"
        pixels, labels = [], []
        for i in _subset(len(names), limit, seed):
            name = names[i]
            blob = archive.read(name) if archive is not None else Path(name).read_bytes()
            try:
                with Image.open(io.BytesIO(blob)) as opened:
                    im = opened.convert(mode)
                    if size and im.size != (size, size):
                        im = im.resize((size, size), Image.Resampling.BILINEAR)
                    pixels.append(np.asarray(im, dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(
                    f"Cannot decode the image {name!r} in {source!r}: {e}", "Remove or re-save that file."
                ) from e
            labels.append(classes.index(Path(name).parent.name))
    except zipfile.BadZipFile as e:
        raise DataError(f"{source!r} is not a readable zip archive: {e}", "Re-create the archive.") from e
    finally:
        if archive is not None:
            archive.close()
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise DataError(
            f"Images in {source!r} have different sizes {sorted(shapes)[:3]}.",
            "Set [data.preprocess] size so they are resized to one size.",
        )
    return np.stack(pixels), np.asarray(labels, dtype=np.int64)
