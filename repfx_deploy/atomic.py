"""Write artifacts so that a failure never leaves a half-written file or folder behind, nor replaces a path.

Everything is written to a hidden temporary sibling ``.<name>.<pid>.<token>.tmp`` first and renamed into place
only when complete; a rename is atomic on one filesystem, and the sibling guarantees the same filesystem. The
contract:

- Without ``force`` an existing output is never replaced: it is refused at the start, and again at the rename,
  so a path that appeared while the run was working is kept (and the run fails with ``OutputExistsError``).
- A folder output is written by one run at a time: ``claim_output`` (and ``atomic_dir``) hold the output's lock
  file (``repfx_deploy.outlock``) and a second run fails at once with ``OutputLockedError``.
- The pid in a temporary's name records its owner. One left by a process that is gone (SIGKILL) is stale, and
  the next write to the same output removes it (``remove_stale_temps``).
- Files are created ``0666 & ~umask`` and folders ``0777 & ~umask``, like every other tool's.
- A full disk inside the block becomes ``DiskFullError`` naming the folder and the free space.
- A signal (as the CLI raises it) never leaves a temporary or a lock behind: the steps that make and register
  them, and those that remove them, finish first (``repfx_deploy.interrupts``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from repfx_deploy.diskfull import disk_full_as_error
from repfx_deploy.errors import InputError, OutputExistsError
from repfx_deploy.interrupts import uninterrupted
from repfx_deploy.outlock import output_lock

log = logging.getLogger("repfx_deploy.atomic")

TEMP_SUFFIX = ".tmp"
# A stale temporary's owner may have been replaced by a new process with the same pid: one that started after
# the temporary was last written cannot own it. /proc's start time is in whole seconds of boot time.
_START_SLACK_S = 2.0
# errnos of a rename that found its destination taken
_TAKEN = frozenset({errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR})

_live: set[Path] = set()  # this process's temporaries that are in use (a stale one may carry our reused pid)


def check_output(path: Path, *, force: bool) -> None:
    """Refuse an existing output path unless ``force``; refuse a parent that is a file."""
    path = Path(path)
    if os.path.lexists(path) and not force:
        raise OutputExistsError(
            f"The output {str(path)!r} already exists.",
            "Choose another path, or pass --force to replace it.",
        )
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise InputError(
            f"Cannot write {str(path)!r}: {str(parent)!r} is not a folder.", "Pick an output under a folder."
        )


@contextlib.contextmanager
def claim_output(path: Path, *, force: bool) -> Iterator[None]:
    """Hold ``path`` for a run: refuse it if it exists (unless ``force``), take its lock, remove stale
    temporaries. Re-entrant in one thread, so a pipeline claims its output at the start and ``atomic_dir``
    writes it at the end under the same lock."""
    path = Path(path)
    check_output(path, force=force)
    made = _make_parent(path)
    try:
        with output_lock(path):
            check_output(path, force=force)  # a run that held the lock until just now may have written it
            remove_stale_temps(path)
            yield
    finally:
        if not os.path.lexists(path):  # nothing was written: take back the folders made for it
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:
                    break


class _WritesOutput(Protocol):
    @property
    def out_dir(self) -> Path: ...

    @property
    def force(self) -> bool: ...


Req = TypeVar("Req", bound=_WritesOutput)
R = TypeVar("R")


def claims_output(fn: Callable[[Req], R]) -> Callable[[Req], R]:
    """Decorate a pipeline function of a request with ``out_dir`` and ``force``: it runs holding that output
    (``claim_output``), so a concurrent run to the same folder is refused before any work."""

    @functools.wraps(fn)
    def wrapper(request: Req) -> R:
        with claim_output(request.out_dir, force=request.force):
            return fn(request)

    return wrapper


@contextlib.contextmanager
def atomic_file(path: Path, *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on failure delete it.

    Without ``force`` a ``path`` that appeared meanwhile is kept and ``OutputExistsError`` raised. Files are not
    locked: concurrent writers of one file each write their own temporary, and the rename decides.
    """
    path = Path(path)
    check_output(path, force=force)
    _make_parent(path)
    remove_stale_temps(path)
    with _assembled(path, directory=False, force=force) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``, on failure it is deleted.

    The output's lock is held throughout (``OutputLockedError`` if another run holds it). With ``force`` an
    existing ``path`` is removed only after the new folder is complete; without it, ``path`` is never replaced.
    """
    path = Path(path)
    with claim_output(path, force=force), _assembled(path, directory=True, force=force) as tmp:
        yield tmp


@contextlib.contextmanager
def _assembled(path: Path, *, directory: bool, force: bool) -> Iterator[Path]:
    """A new temporary beside ``path``, put in place when the block ends well and removed in every case."""
    tmp: Path | None = None
    try:
        with uninterrupted():  # made and registered for removal, or not made: a signal in between would leave it
            tmp = _create_temp(path, directory=directory)
        with disk_full_as_error(path.parent):
            yield tmp
            with uninterrupted():  # a --force replacement is two renames, and the second undoes the first on failure
                (_put_dir_in_place if directory else _put_file_in_place)(tmp, path, force=force)
    finally:
        if tmp is not None:
            with uninterrupted():
                _discard(tmp)


def temp_pattern(path: Path) -> re.Pattern[str]:
    """The names of ``path``'s temporaries; group 1 is the owner's pid."""
    return re.compile(rf"^\.{re.escape(Path(path).name)}\.(\d+)\.[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}$")


def list_temps(path: Path) -> list[Path]:
    """The temporaries of ``path`` that are there now, live or stale."""
    path = Path(path)
    pattern = temp_pattern(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(path.parent / n for n in names if pattern.match(n))


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` whose owning process is gone; returns what was removed."""
    path = Path(path)
    pattern = temp_pattern(path)
    removed = []
    for tmp in list_temps(path):
        match = pattern.match(tmp.name)
        assert match is not None  # list_temps matched it
        try:
            written = tmp.lstat().st_mtime
        except FileNotFoundError:
            continue
        pid = int(match.group(1))
        if _owner_gone(pid, written, tmp):
            _remove(tmp)
            removed.append(tmp)
            log.info("removed %s, left by process %d, which is gone", tmp, pid)
    return removed


def _make_parent(path: Path) -> list[Path]:
    """Make the folders above ``path``; returns those that were made, innermost first."""
    missing = []
    for folder in path.absolute().parents:
        if os.path.lexists(folder):
            break
        missing.append(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise InputError(
            f"Cannot write {str(path)!r}: a part of {str(path.parent)!r} is a file.", "Pick an output under a folder."
        ) from e
    return missing


def _create_temp(path: Path, *, directory: bool) -> Path:
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            if directory:
                os.mkdir(tmp, 0o777)  # the umask applies, as for any folder (mkdtemp would make it 0700)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mkstemp: 0600
        except FileExistsError:
            continue
        _live.add(tmp.absolute())
        return tmp


def _put_file_in_place(tmp: Path, path: Path, *, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # unlike a rename, a link never replaces its destination
    except FileExistsError as e:
        raise _appeared(path) from e
    except OSError as e:  # a filesystem without hard links: check, then rename
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(path):
            raise _appeared(path) from e
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def _put_dir_in_place(tmp: Path, path: Path, *, force: bool) -> None:
    if not os.path.lexists(path):
        try:
            # a folder renamed onto an existing folder replaces it only when that one is empty; onto a file, fails
            os.rename(tmp, path)
        except OSError as e:
            if e.errno not in _TAKEN:
                raise
            if not force:
                raise _appeared(path) from e
        else:
            return
    if not force:
        raise _appeared(path)
    old = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    _live.add(old.absolute())
    try:
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)  # put the previous result back
            raise
    finally:
        _discard(old)


def _appeared(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{str(path)!r} appeared while this run was writing it; it was kept, and this run's result was discarded.",
        "Move it away (or pass --force to replace it), then rerun.",
    )


def _discard(tmp: Path) -> None:
    _live.discard(tmp.absolute())
    if os.path.lexists(tmp):
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _owner_gone(pid: int, written: float, tmp: Path) -> bool:
    """Whether the process that made ``tmp`` (last written at ``written``) is gone."""
    if pid == os.getpid():
        return tmp.absolute() not in _live
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, and another user's
    state, started = _process_state(pid)
    if state in ("Z", "X"):  # exited, not yet reaped by its parent
        return True
    return started is not None and started > written + _START_SLACK_S


def _process_state(pid: int) -> tuple[str | None, float | None]:
    """(state letter, start time in seconds since the epoch) from Linux's /proc; (None, None) elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None, None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name (field 2) may hold spaces and parentheses
    try:
        started = int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks
    except (IndexError, ValueError, OSError):
        return fields[0] if fields else None, None
    return fields[0], started
