"""Write artifacts so that a failure never leaves a half-written file or folder behind.

Everything is written to a temporary sibling first and renamed into place only when complete; ``os.replace``
is atomic on one filesystem, and the sibling guarantees the same filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from repfx_deploy.errors import InputError, OutputExistsError


def check_output(path: Path, *, force: bool) -> None:
    """Refuse an existing output path unless ``force``; refuse a parent that is a file."""
    if path.exists() and not force:
        raise OutputExistsError(
            f"The output {str(path)!r} already exists.",
            "Choose another path, or pass --force to replace it.",
        )
    parent = path.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise InputError(
            f"Cannot write {str(path)!r}: {str(parent)!r} is not a folder.", "Pick an output under a folder."
        )


@contextlib.contextmanager
def atomic_file(path: Path, *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on failure delete it."""
    path = Path(path)
    check_output(path, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``, on failure it is deleted.

    With ``force`` an existing ``path`` is removed only after the new folder is complete.
    """
    path = Path(path)
    check_output(path, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
