"""Bounded reads of zip archives and files: counts and sizes checked before anything is decompressed.

A zip's entry count, each member's declared size and the bytes it actually yields are all checked against
``DataLimits``: the count from the end-of-central-directory record before ``zipfile`` builds an object per
entry, the declared sizes before a member is opened, and the real bytes while it is streamed (a crafted zip can
declare a small size and hold a large one).
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from repfx_deploy.data.limits import FILE_MB_ENV, FILES_ENV, TOTAL_MB_ENV, DataLimits, too_large
from repfx_deploy.errors import DataError

_CHUNK = 1 << 20
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF


@dataclass
class Budget:
    """Decompressed bytes left for one data set (``DataLimits.max_total_bytes`` to start with)."""

    source: str
    limits: DataLimits
    used: int = field(default=0)

    def check(self, more: int, what: str) -> None:
        """Refuse, before reading, ``more`` bytes that would take the total over the limit."""
        if self.used + more > self.limits.max_total_bytes:
            raise too_large(
                f"The data decompressed from {self.source!r}, with {what},",
                self.used + more,
                self.limits.max_total_bytes,
                TOTAL_MB_ENV,
            )

    def take(self, n: int, what: str) -> None:
        self.check(n, what)
        self.used += n


def declared_entries(path: Path) -> int | None:
    """The entry count a zip's end-of-central-directory record declares (zip64 too); ``None`` if there is none
    (``zipfile`` then reports the archive as unreadable)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        tail_start = max(0, size - (22 + _MAX_COMMENT))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < 22:
            return None
        entries = struct.unpack("<H", tail[at + 10 : at + 12])[0]
        if entries != 0xFFFF:
            return entries
        locator = at - 20  # the zip64 locator sits right before the classic record
        if locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR:
            return entries
        (record_offset,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
        f.seek(record_offset)
        record = f.read(56)
        if len(record) < 56 or record[:4] != _ZIP64_EOCD:
            return None
        return int(struct.unpack("<Q", record[32:40])[0])


def open_zip(path: Path, limits: DataLimits) -> zipfile.ZipFile:
    """``path`` opened as a zip once its entry count is within ``limits.max_files``; ``DataError`` otherwise."""
    source = str(path)
    try:
        declared = declared_entries(path)
    except OSError as e:
        raise DataError(f"Cannot read {source!r}: {e}", "Check the file and its permissions.") from e
    if declared is not None and declared > limits.max_files:
        raise too_large(f"The number of entries in {source!r}", declared, limits.max_files, FILES_ENV, unit="entries")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"{source!r} is not a readable zip archive: {e}", "Re-create the archive.") from e
    if len(archive.infolist()) > limits.max_files:  # the record can lie; the directory zipfile read cannot
        count = len(archive.infolist())
        archive.close()
        raise too_large(f"The number of entries in {source!r}", count, limits.max_files, FILES_ENV, unit="entries")
    return archive


def _cap(limits: DataLimits, budget: Budget) -> tuple[int, str]:
    """The most bytes the next file may yield, and the variable that raises that bound."""
    left = limits.max_total_bytes - budget.used
    return (limits.max_file_bytes, FILE_MB_ENV) if limits.max_file_bytes <= left else (left, TOTAL_MB_ENV)


def read_stream(stream: IO[bytes], limit: int, env: str, *, what: str) -> bytes:
    """All of ``stream`` in chunks, refused as soon as it yields more than ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise too_large(f"{what} (more bytes than it declares)", total, limit, env)
        chunks.append(chunk)


def read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, limits: DataLimits, budget: Budget
) -> bytes:
    """One image member, checked by its declared size and then by the bytes it really yields."""
    what = f"the member {info.filename!r} of {source!r}"
    if info.file_size > limits.max_file_bytes:
        raise too_large(what, info.file_size, limits.max_file_bytes, FILE_MB_ENV)
    budget.check(info.file_size, what)
    try:
        with archive.open(info) as stream:
            blob = read_stream(stream, *_cap(limits, budget), what=what)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        # a member that is truncated, encrypted, or yields other bytes than its CRC says (a lying size)
        raise DataError(f"Cannot read {what}: {e}", "Re-create the archive.") from e
    budget.take(len(blob), what)
    return blob


def read_file(path: Path, limits: DataLimits, budget: Budget) -> bytes:
    """One image file of a folder, bounded the same way (a symlink to ``/dev/zero`` has no size to check)."""
    what = f"the file {str(path)!r}"
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise too_large(what, size, limits.max_file_bytes, FILE_MB_ENV)
        budget.check(size, what)
        with open(path, "rb") as stream:
            blob = read_stream(stream, *_cap(limits, budget), what=what)
    except OSError as e:
        raise DataError(f"Cannot read {what}: {e}", "Check the file and its permissions.") from e
    budget.take(len(blob), what)
    return blob
