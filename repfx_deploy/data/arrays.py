"""``.npy`` and ``.npz`` data, read within ``DataLimits``: headers are checked before any array is loaded.

An ``.npz`` is a zip whose members can be compressed: each member's declared size and the size its ``.npy``
header claims are both counted against ``max_total_bytes`` before it is decompressed, and the reader then
allocates no more than the header says, so a member that holds more than it declares cannot expand past it.
A plain ``.npy`` is memory-mapped (nothing is decompressed), so only the samples used are ever read.
Object arrays are refused (they would be unpickled); so are strings and other non-numeric dtypes.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from repfx_deploy.data.archive import Budget, open_zip
from repfx_deploy.data.limits import DataLimits
from repfx_deploy.errors import DataError

# booleans, signed and unsigned integers, floats: what a model input or a class label can be
NUMERIC_KINDS = "biuf"
_DTYPE_WORDS = {"U": "strings", "S": "byte strings", "O": "Python objects", "V": "records", "c": "complex numbers"}
_DTYPE_WORDS |= {"M": "dates", "m": "time deltas"}


def read_arrays(path: Path, limits: DataLimits) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples ``x`` and labels ``y`` (``None`` when absent) from a ``.npy`` (``x`` only) or ``.npz`` (``x``,
    optional ``y``); ``DataError`` naming the file for anything unreadable, non-numeric or over ``limits``."""
    source = str(path)
    if path.suffix == ".npy":
        return _read_npy(path, source), None
    budget = Budget(source, limits)
    with open_zip(path, limits) as archive:
        members = {_array_name(i.filename): i for i in archive.infolist() if not i.is_dir()}
        if "x" not in members:
            raise DataError(
                f"{source!r} has arrays {sorted(members)} but no 'x'.",
                "Save the samples as x (and labels as y): np.savez(path, x=..., y=...).",
            )
        x = _read_member(archive, members["x"], source, "x", budget)
        y = _read_member(archive, members["y"], source, "y", budget) if "y" in members else None
    return x, y


def _array_name(filename: str) -> str:
    return filename[: -len(".npy")] if filename.endswith(".npy") else filename


def check_dtype(dtype: np.dtype, what: str) -> None:
    """``DataError`` unless ``dtype`` is a number type a model input or label can be."""
    if dtype.kind not in NUMERIC_KINDS:
        words = _DTYPE_WORDS.get(dtype.kind, "non-numeric values")
        raise DataError(
            f"Cannot read {what}: it holds {words} (dtype {dtype.str}), not numbers.",
            "Store the samples as a numeric array (uint8 images or preprocessed float32) and labels as integers.",
        )


def _header(stream: IO[bytes], what: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, read without loading the array."""
    fmt: Any = np.lib.format
    try:
        version = fmt.read_magic(stream)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _fortran, dtype = reader(stream)
    except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as e:
        raise DataError(
            f"Cannot read {what}: not a readable .npy array ({e}).", "Save it again with np.save/np.savez."
        ) from e
    check_dtype(dtype, what)
    return tuple(int(d) for d in shape), dtype


def _read_npy(path: Path, source: str) -> np.ndarray:
    what = f"{source!r}"
    try:
        with open(path, "rb") as f:
            _header(f, what)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise DataError(
            f"Cannot read {what} as numpy data: {e}", "Check the file; object arrays are refused for safety."
        ) from e


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, key: str, budget: Budget) -> np.ndarray:
    what = f"the array {key!r} of {source!r}"
    budget.check(info.file_size, what)  # declared size: refused before anything is decompressed
    try:
        with archive.open(info) as stream:
            shape, dtype = _header(stream, what)
        claimed = math.prod(shape) * dtype.itemsize
        budget.check(claimed, what)  # the header's size: the most the reader below allocates
        if claimed > info.file_size:
            raise DataError(
                f"Cannot read {what}: its header claims {claimed:,} bytes in a member of {info.file_size:,}: the archive is corrupt or crafted.",
                "Save the data again with np.savez.",
            )
        with archive.open(info) as stream:
            array = np.lib.format.read_array(stream, allow_pickle=False)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
        raise DataError(
            f"Cannot read {what} as numpy data: {e}", "Check the file; object arrays are refused for safety."
        ) from e
    budget.take(array.nbytes, what)
    return array
