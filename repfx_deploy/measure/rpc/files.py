"""The file functions a device session serves, confined to that session's folder.

TVM's server registers ``tvm.rpc.server.upload`` / ``download`` / ``remove`` (C++, on top of
``tvm.rpc.server.workpath``), ``load_module`` and ``download_linked_module`` (Python); each joins the
client's name to the work folder as it is, so ``../../etc/passwd`` or ``/etc/passwd`` reach any file.
``install`` replaces all of them in the session's process with versions that refuse absolute names, ``..``
parts and anything whose resolved path (symbolic links followed) leaves the folder, and that refuse an upload
over the size limit. Errors reach the client as the text of TVM's RPC error, starting with ``repfx:``.

Standard library and TVM only, TVM imported inside ``install`` (the emulated server imports this).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

DEFAULT_MAX_UPLOAD_BYTES = 256 << 20
UPLOAD_REFUSED = "repfx: upload refused"
PATH_REFUSED = "repfx: path refused"
_LOADABLE = (".so", ".dylib")  # .o and .tar would make the server run a compiler or unpack an archive


class PathRefused(ValueError):
    """A client's path that would leave the session folder (or names nothing usable in it)."""


def confine(root: Path, name: object, *, allow_root: bool = False) -> Path:
    """``root / name`` resolved, when it stays inside ``root`` (which must be resolved already).

    Refused: a non-string, NUL bytes, an absolute name (``/x``, ``\\x``, ``C:x``), any ``..`` part, and a
    name whose resolved path (links followed, existing or not) is outside ``root``; ``""`` and ``.`` name
    ``root`` itself only with ``allow_root``.
    """
    if not isinstance(name, str) or "\x00" in name:
        raise PathRefused(f"{PATH_REFUSED}: {name!r} is not a file name")
    if name in ("", "."):
        if allow_root:
            return root
        raise PathRefused(f"{PATH_REFUSED}: a file name is needed, got {name!r}")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise PathRefused(f"{PATH_REFUSED}: {name!r} is absolute; names are relative to the session folder")
    if ".." in re.split(r"[/\\]", name):
        raise PathRefused(f"{PATH_REFUSED}: {name!r} has a '..' part")
    resolved = (root / name).resolve()
    if resolved != root and root not in resolved.parents:
        raise PathRefused(f"{PATH_REFUSED}: {name!r} leads outside the session folder (through a link)")
    if resolved == root and not allow_root:
        raise PathRefused(f"{PATH_REFUSED}: {name!r} names the session folder itself")
    return resolved


def upload(root: Path, name: object, data: bytes, max_bytes: int) -> None:
    """Write ``data`` to ``name`` in ``root``; over ``max_bytes``: refused, nothing written."""
    if len(data) > max_bytes:
        raise ValueError(
            f"{UPLOAD_REFUSED}: {len(data)} bytes is over this server's limit of {max_bytes} bytes "
            f"({max_bytes / 2**20:.0f} MiB; the server's --max-upload-mb raises it)"
        )
    path = confine(root, name)
    if path.is_dir():
        raise PathRefused(f"{PATH_REFUSED}: {name!r} is a folder")
    # O_NOFOLLOW: the resolved path has no link left; one made since is not followed either
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def download(root: Path, name: object) -> bytes:
    path = confine(root, name)
    if not path.is_file():
        raise PathRefused(f"{PATH_REFUSED}: {name!r} is not a file in the session folder")
    return path.read_bytes()


def remove(root: Path, name: object) -> None:
    """Delete a file or folder in ``root``; the folder itself (``""``, as MetaSchedule's cleanup asks) and a
    missing name are left alone: the server deletes the whole folder when the session ends."""
    path = confine(root, name, allow_root=True)
    if path == root or not os.path.lexists(path):
        return
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def loadable(root: Path, name: object) -> Path:
    """The uploaded shared library ``name`` in ``root``, which ``load_module`` may load."""
    path = confine(root, name)
    if not path.is_file():
        raise PathRefused(f"{PATH_REFUSED}: {name!r} was not uploaded to this session")
    if path.suffix not in _LOADABLE:
        raise PathRefused(f"{PATH_REFUSED}: {name!r} is not a shared library ({', '.join(_LOADABLE)})")
    return path


def install(root: Path, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """Register the confined file functions in this process (a session's), overriding TVM's."""
    import tvm_ffi
    from tvm.runtime.module import load_module

    root = Path(root).resolve()

    def register(name: str, fn) -> None:
        tvm_ffi.register_global_func(name, fn, override=True)

    register("tvm.rpc.server.workpath", lambda name: str(confine(root, name, allow_root=True)))
    register("tvm.rpc.server.upload", lambda name, data: upload(root, name, data, max_upload_bytes))
    register("tvm.rpc.server.download", lambda name: bytearray(download(root, name)))
    register("tvm.rpc.server.remove", lambda name: remove(root, name))
    register("tvm.rpc.server.load_module", lambda name: load_module(str(loadable(root, name))))
    register("tvm.rpc.server.download_linked_module", lambda name: bytearray(loadable(root, name).read_bytes()))
