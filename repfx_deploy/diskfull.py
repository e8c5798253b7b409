"""Tell a full disk apart from every other failure, so that it is reported as such.

Exporters, compilers and writers wrap the ``OSError`` of a failed write in their own exception types, and the
broad ``except`` clauses that turn those into "operator not supported" would otherwise hide it. Any such clause
calls ``raise_if_disk_full(e, folder)`` first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from repfx_deploy.errors import DiskFullError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# C++ libraries (protobuf, LLVM, the linker) report the failed write only as text in their own exception
_DISK_FULL_TEXTS = tuple(os.strerror(n) for n in sorted(DISK_FULL_ERRNOS))
_MAX_CHAIN = 32  # causes followed; a cycle in __cause__/__context__ must not loop forever


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from (``__cause__``/``__context__``), is a full disk."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        if isinstance(current, DiskFullError):
            return True
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(current) for text in _DISK_FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(folder: Path, exc: BaseException | None = None) -> DiskFullError:
    """The ``DiskFullError`` for a write under ``folder``: the folder, the free space there, and the fix."""
    folder = _output_of(_failed_folder(exc, Path(folder)))
    quota = _errno_of(exc) == errno.EDQUOT
    what = "The disk quota is exceeded" if quota else "The disk is full"
    error = DiskFullError(
        f"{what}: writing under {str(folder)!r} failed ({_free_space(folder)} free there).",
        ("Free some space there (or raise the quota)" if quota else "Free some space on that disk")
        + ", or write the output to another disk (-o), then rerun; nothing half-written was kept.",
    )
    error.errno = errno.EDQUOT if quota else errno.ENOSPC
    return error


def raise_if_disk_full(exc: BaseException, folder: Path) -> None:
    """Raise ``DiskFullError`` (from ``exc``) when ``exc`` is a full disk; otherwise return and let the caller
    handle ``exc`` as it would. ``exc`` already a ``DiskFullError`` is raised again unchanged."""
    if isinstance(exc, DiskFullError):
        raise exc
    if is_disk_full(exc):
        raise disk_full_error(folder, exc) from exc


@contextlib.contextmanager
def disk_full_as_error(folder: Path) -> Iterator[None]:
    """Inside this block, a full disk (an ``OSError`` or anything raised from one) becomes ``DiskFullError``."""
    try:
        yield
    except Exception as e:  # only a full disk is translated; everything else goes on unchanged
        raise_if_disk_full(e, folder)
        raise


# A run's hidden temporary (atomic.py: ``.<name>.<pid>.<8 hex>.tmp``) is gone by the time the message is read.
_TEMP_PART = re.compile(r"^\.(.+)\.\d+\.[0-9a-f]{8}\.tmp$")


def _output_of(folder: Path) -> Path:
    """``folder`` with a temporary of ``atomic_dir``/``atomic_file`` in it named as the output it was becoming."""
    parts = folder.parts
    for i, part in enumerate(parts):
        match = _TEMP_PART.match(part)
        if match:
            return Path(*parts[:i], match.group(1), *parts[i + 1 :])
    return folder


def _errno_of(exc: BaseException | None) -> int | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _failed_folder(exc: BaseException | None, folder: Path) -> Path:
    """``folder``, or the folder of the file whose write failed when that one is on another filesystem (a
    scratch folder under /tmp, say): the disk to free is the one that is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and isinstance(exc.filename, (str, bytes, os.PathLike)):
            failed = Path(os.fsdecode(exc.filename)).parent
            if _device(failed) not in (None, _device(folder)):
                return failed
            break
        exc = exc.__cause__ or exc.__context__
    return folder


def _device(folder: Path) -> int | None:
    for candidate in (folder, *folder.absolute().parents):
        try:
            return os.stat(candidate).st_dev
        except OSError:
            continue
    return None


def _free_space(folder: Path) -> str:
    """Free bytes on the filesystem of ``folder`` (or of its nearest existing parent), for people."""
    for candidate in (folder, *folder.absolute().parents):
        try:
            free = shutil.disk_usage(candidate).free
        except OSError:
            continue
        return _human(free)
    return "unknown space"


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
