"""Bounds on what reading a data set may decompress, so that a small hostile file cannot exhaust memory.

A 2 MB zip of images once expanded to 4.35 GB of resident memory: zip members, ``.npz`` arrays and PNG pixels
are all compressed, and their declared sizes can lie. Every reader in ``repfx_deploy.data`` checks these bounds
before it decompresses anything, and again against the bytes it actually reads.

The defaults fit real data sets (ImageNet's 50,000 validation images, a 4K photo, a few GiB of arrays) and can
be raised for one run with environment variables, each named in the message when its bound is hit:

=================================  ===================================================  ============
variable                           bound                                                default
=================================  ===================================================  ============
``REPFX_DATA_MAX_FILES``           image files in one folder or archive                 500,000
``REPFX_DATA_MAX_FILE_MB``         bytes of one image file (as stored, uncompressed)    256 MiB
``REPFX_DATA_MAX_TOTAL_MB``        bytes decompressed from one archive or ``.npz``      8 GiB
``REPFX_DATA_MAX_IMAGE_PIXELS``    width x height of one image                          64 Mpixel
=================================  ===================================================  ============
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from repfx_deploy.errors import DataError

_MIB = 1 << 20

FILES_ENV = "REPFX_DATA_MAX_FILES"
FILE_MB_ENV = "REPFX_DATA_MAX_FILE_MB"
TOTAL_MB_ENV = "REPFX_DATA_MAX_TOTAL_MB"
PIXELS_ENV = "REPFX_DATA_MAX_IMAGE_PIXELS"


@dataclass(frozen=True)
class DataLimits:
    """What one data set may hold; see the module docstring for why and how to raise each bound."""

    # ImageNet-1k's validation set is 50,000 images, its training set 1.28 M: calibration sets are far smaller
    max_files: int = 500_000
    # a 4K PNG is ~25 MiB; a single image member larger than this is not a photo
    max_file_bytes: int = 256 * _MIB
    # every decompressed byte of one archive or .npz (arrays of a large evaluation set fit; a bomb does not)
    max_total_bytes: int = 8 * 1024 * _MIB
    # 8192 x 8192; PIL's own default warns at 89 Mpixel and only refuses at twice that
    max_image_pixels: int = 64 * _MIB

    def __post_init__(self) -> None:
        for name in ("max_files", "max_file_bytes", "max_total_bytes", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DataLimits.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_env(cls) -> DataLimits:
        """The defaults, with any bound the environment raises (or lowers); ``DataError`` for a bad setting."""
        default = cls()
        return cls(
            max_files=_env_int(FILES_ENV, default.max_files, 1),
            max_file_bytes=_env_int(FILE_MB_ENV, default.max_file_bytes, _MIB),
            max_total_bytes=_env_int(TOTAL_MB_ENV, default.max_total_bytes, _MIB),
            max_image_pixels=_env_int(PIXELS_ENV, default.max_image_pixels, 1),
        )


def _env_int(name: str, default: int, unit: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise DataError(f"{name}={text!r} is not a positive integer.", f"Set {name} to a whole number, or unset it.")
    return value * unit


def too_large(what: str, size: int, limit: int, env: str, unit: str = "MB") -> DataError:
    """The error for a bound that was hit: what, by how much, and the variable that raises it."""
    wanted = max(size, 2 * limit)  # a setting that lets this file through, and at least doubles the bound
    if unit == "MB":
        shown, bound, hint = f"{size / _MIB:,.1f} MiB", f"{limit / _MIB:,.0f} MiB", f"{-(-wanted // _MIB)}"
    else:
        shown, bound, hint = f"{size:,} {unit}", f"{limit:,} {unit}", f"{wanted}"
    what = what[:1].upper() + what[1:]
    return DataError(
        f"{what} is {shown}, over the limit of {bound}, so it was not read (a small file that expands this much is "
        "a decompression bomb; otherwise the data set is far larger than calibration or evaluation needs).",
        f"If the data is genuine, raise the limit for this run, e.g. {env}={hint}, or use fewer or smaller files.",
    )
