"""Image folders and zip archives of images, decoded to uint8 pixels within ``DataLimits``.

Class-folder layout (``<class>/<image>`` at any depth; classes sorted by name give the labels), as torchvision's
ImageFolder. Images are chosen before any is read, each is read with its size bounded (see ``archive``), and
its width x height is checked from its header before its pixels are decoded: PIL's ``DecompressionBombError``
and ``DecompressionBombWarning`` are ``DataError`` here, with PIL's own bound set to ours while decoding.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repfx_deploy.data.archive import Budget, open_zip, read_file, read_member
from repfx_deploy.data.limits import FILES_ENV, PIXELS_ENV, DataLimits, too_large
from repfx_deploy.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Images:
    """Decoded images: ``pixels`` (N x H x W x C uint8), ``labels`` (class indices), and the index of each
    image in the sorted list of the set's images (``positions``), for messages."""

    pixels: np.ndarray
    labels: np.ndarray
    positions: np.ndarray


def read_images(path: Path, mode: str, size: int, *, choose: Callable[[int], np.ndarray], limits: DataLimits) -> Images:
    """Decode the images of the folder or zip at ``path`` chosen by ``choose(n) -> indices`` to PIL ``mode``
    ("L" or "RGB"), resized to ``size`` x ``size`` when ``size`` is given."""
    source = str(path)
    budget = Budget(source, limits)
    archive: zipfile.ZipFile | None = None
    infos: dict[str, zipfile.ZipInfo] = {}
    with contextlib.ExitStack() as stack:
        if path.is_dir():
            names = _folder_images(path, limits)
        else:
            archive = stack.enter_context(open_zip(path, limits))
            infos = {i.filename: i for i in archive.infolist() if not i.is_dir()}
            names = sorted(n for n in infos if Path(n).suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise DataError(
                f"No images found in {source!r}.",
                f"Put images ({', '.join(IMAGE_SUFFIXES)}) in one folder per class, e.g. {source}/cat/1.png.",
            )
        classes = sorted({Path(n).parent.name for n in names})
        positions = np.asarray(choose(len(names)), dtype=np.int64)
        pixels: list[np.ndarray] = []
        labels: list[int] = []
        for i in positions:
            name = names[int(i)]
            if archive is not None:
                blob = read_member(archive, infos[name], source, limits, budget)
            else:
                blob = read_file(Path(name), limits, budget)
            image = decode(blob, name, source, mode, size, limits)
            budget.take(image.nbytes, f"the decoded pixels of {len(pixels) + 1} image(s)")
            pixels.append(image)
            labels.append(classes.index(Path(name).parent.name))
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise DataError(
            f"Images in {source!r} have different sizes {sorted(shapes)[:3]}.",
            "Set [data.preprocess] size so they are resized to one size.",
        )
    return Images(np.stack(pixels), np.asarray(labels, dtype=np.int64), positions)


def _folder_images(path: Path, limits: DataLimits) -> list[str]:
    """Image paths under ``path``, sorted; ``DataError`` past ``limits.max_files`` (counted as found, so a
    huge tree is not listed whole first)."""
    names = []
    for p in path.rglob("*"):
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir():
            names.append(str(p))
            if len(names) > limits.max_files:
                raise too_large(
                    f"The number of images in {str(path)!r}", len(names), limits.max_files, FILES_ENV, "files"
                )
    return sorted(names)


@contextlib.contextmanager
def _pil_pixel_bound(max_pixels: int) -> Iterator[None]:
    """PIL's ``MAX_IMAGE_PIXELS`` set to ``max_pixels`` for the block and its bomb warning made an error, so
    PIL refuses past our bound (formats whose size only shows while decoding, GIF frames, included), and a
    user who raises our bound is not stopped by PIL's default."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _header_size(blob: bytes) -> tuple[int, int]:
    """Width and height from an image's header, PIL's bound off (``open`` decodes nothing), for a message."""
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(blob)) as opened:
            return opened.size
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def decode(blob: bytes, name: str, source: str, mode: str, size: int, limits: DataLimits) -> np.ndarray:
    """One image's bytes -> H x W (x C) uint8 in ``mode``, resized to ``size`` when given."""
    from PIL import Image, UnidentifiedImageError

    what = f"the image {name!r} in {source!r}"
    try:
        with _pil_pixel_bound(limits.max_image_pixels), Image.open(io.BytesIO(blob)) as opened:
            width, height = opened.size  # from the header: nothing is decoded yet
            if width * height > limits.max_image_pixels:
                raise too_large(
                    f"{what} ({width} x {height})", width * height, limits.max_image_pixels, PIXELS_ENV, "pixels"
                )
            im = opened.convert(mode)
            if size and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        width, height = _header_size(blob)
        pixels = width * height
        raise too_large(f"{what} ({width} x {height})", pixels, limits.max_image_pixels, PIXELS_ENV, "pixels") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"Cannot decode {what}: {e}", "Remove or re-save that file.") from e
