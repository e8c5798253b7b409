"""One writer per output path: a lock file ``.<name>.lock`` beside the output, held for the whole run.

The lock is an ``fcntl.flock`` on that file, so the kernel releases it when its process dies, however it dies;
a second run to the same output fails at once with ``OutputLockedError`` naming the holder's pid. The file is
removed when the lock is released (a SIGKILL leaves it behind, unlocked and harmless: the next run takes it).

Holding is re-entrant within one thread: a pipeline takes the lock when it starts and ``atomic_dir`` takes it
again when it assembles the folder. Another thread of the same process is refused like another process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from repfx_deploy.errors import InputError, OutputLockedError
from repfx_deploy.interrupts import uninterrupted

log = logging.getLogger("repfx_deploy.outlock")

# How long to wait for a lock's holder to write its pid (it does so right after taking the lock).
_PID_WAIT_S = 0.5
# errnos of filesystems that cannot lock (some network filesystems): the run goes on unlocked, with a warning
_NO_LOCKING = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})

_held: dict[tuple[Path, int], list[int]] = {}  # (lock path, thread id) -> [fd, depth]
_held_guard = threading.Lock()


def lock_path(output: Path) -> Path:
    """The lock file of ``output``: a hidden sibling, so it is on the same filesystem and in the same folder."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def lock_holder(output: Path) -> int | None:
    """The pid written in ``output``'s lock file, or ``None`` (no file, or no pid in it yet)."""
    try:
        text = lock_path(output).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def is_locked(output: Path) -> bool:
    """Whether some process (this one included) holds ``output``'s lock now. For tests and benchmarks: the
    probe holds the lock for an instant, so a run starting at that instant is refused."""
    import fcntl

    try:
        fd = os.open(lock_path(output), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[Path]:
    """Hold ``output``'s lock for the block (yields the lock file's path); the folder it is in must exist.

    Raises ``OutputLockedError`` at once when another process (or thread) holds it.
    """
    key = _key(output)
    entry: list[int] | None = None
    try:
        with uninterrupted():  # a lock file made must be registered, or a signal here would leave it behind
            with _held_guard:
                entry = _held.get(key)
                if entry is not None:
                    entry[1] += 1
            if entry is None:
                fd = _acquire(Path(output), key[0])
                with _held_guard:
                    _held[key] = entry = [fd, 1]
        yield key[0]
    finally:
        if entry is not None:
            with uninterrupted():
                with _held_guard:
                    entry[1] -= 1
                    done = entry[1] == 0
                    if done:
                        del _held[key]
                if done:
                    _release(entry[0], key[0])


def _key(output: Path) -> tuple[Path, int]:
    path = lock_path(output)
    return path.parent.resolve() / path.name, threading.get_ident()


def _acquire(output: Path, path: Path) -> int:
    """Open and lock ``path``; retry when the file was replaced between the open and the lock (its previous
    holder removed it on release, so the lock taken was on a file no one else will open)."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for any file
        except PermissionError as e:
            raise InputError(
                f"Cannot write in {str(path.parent)!r} (permission denied), so {str(output)!r} cannot be written.",
                "Choose an output (-o) in a folder you can write to.",
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _wait_for_holder(output)
            who = f"process {pid}" if pid is not None else "another process"
            raise OutputLockedError(
                f"{str(output)!r} is being written by {who} (it holds {str(path)!r}).",
                "Wait for that run to finish, or write to another output (-o).",
            ) from None
        except OSError as e:
            if e.errno not in _NO_LOCKING:
                os.close(fd)
                raise
            log.warning("%s cannot be locked on this filesystem (%s); concurrent runs are not detected", path, e)
            return fd
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return fd


def _wait_for_holder(output: Path) -> int | None:
    deadline = time.monotonic() + _PID_WAIT_S
    while True:
        pid = lock_holder(output)
        if pid is not None or time.monotonic() > deadline:
            return pid
        time.sleep(0.02)


def _release(fd: int, path: Path) -> None:
    # removed while still locked, so a process that opened it meanwhile sees the file change and retries
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)
