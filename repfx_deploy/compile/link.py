"""Package a built TVM executable for its device: a shared library, or object files plus their link command.

A target whose architecture is this machine's links natively; an aarch64 or armv7 Linux target links with
Debian's cross g++; an Android target cannot link here (the NDK is not installable), so it ships as
``model.tar`` (``lib0.o`` and ``devc.o``) with the exact NDK command that turns it into ``model.so``.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from repfx_deploy.errors import CompileError

LIBRARY_NAME = "model.so"
OBJECTS_NAME = "model.tar"
ANDROID_API = 24  # the oldest API level TVM's Android runtime builds support

_CROSS_GXX = {"aarch64": "aarch64-linux-gnu-g++", "arm": "arm-linux-gnueabihf-g++"}


def _arch(triple_or_machine: str) -> str:
    arch = triple_or_machine.split("-")[0].lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, "arm" if arch.startswith(("armv", "thumb")) else arch)


def is_foreign_target(target_dict: dict) -> bool:
    """True when the target's architecture is not this machine's (cross-compilation: nothing runs here)."""
    triple = str(target_dict.get("mtriple", ""))
    return triple not in ("", "detect") and _arch(triple) != _arch(platform.machine())


def runs_here(target_dict: dict, link: str) -> bool:
    """True when an artifact for ``target_dict`` packaged as ``link`` can be loaded and run on this machine."""
    return link == "shared" and not is_foreign_target(target_dict)


def _cross_compiler(target_dict: dict) -> tuple[object | None, str]:
    """``(fcompile, name)`` for ``export_library``: ``(None, "host")`` on the host, else the target's cross g++."""
    if not is_foreign_target(target_dict):
        return None, "host"
    from tvm.support import cc

    triple = str(target_dict["mtriple"])
    known = _CROSS_GXX.get(_arch(triple))
    names = list(dict.fromkeys([f"{triple}-g++", *([known] if known else [])]))
    for name in names:
        if shutil.which(name):
            return cc.cross_compiler(name), name
    raise CompileError(
        f"No C++ cross compiler for {triple} to link model.so (looked for {', '.join(names)}).",
        f"Install one (Debian: apt-get install g++-{(known or triple + '-g++')[:-4]}), or compile on the device.",
    )


def ndk_link_command(target_dict: dict) -> str:
    """The shell command that links the objects of ``model.tar`` into ``model.so`` with the Android NDK."""
    arch = _arch(str(target_dict["mtriple"]))
    clang = {"aarch64": "aarch64-linux-android", "arm": "armv7a-linux-androideabi", "x86_64": "x86_64-linux-android"}[
        arch
    ]
    return (
        "mkdir -p objs && tar -xf model.tar -C objs && "
        f"$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/linux-x86_64/bin/{clang}{ANDROID_API}-clang++ "
        "-shared -fPIC -o model.so objs/*.o"
    )


def export_artifact(executable, out_dir: Path, target_dict: dict, link: str) -> tuple[Path, dict]:
    """Write ``executable`` into ``out_dir`` as ``link`` says; returns the file and a description for the manifest.

    ``link`` is ``"shared"`` (``model.so``, loadable with ``tvm.runtime.load_module`` on the device) or
    ``"objects"`` (``model.tar`` plus ``command``, to link on a machine with the device's toolchain).
    """
    if link == "objects":
        path = out_dir / OBJECTS_NAME
        executable.export_library(str(path))  # a .tar needs no toolchain, for any triple
        return path, {
            "kind": "objects",
            "command": ndk_link_command(target_dict),
            "runtime": "link the result with libtvm_runtime.so built for the device",
        }
    if link != "shared":
        raise CompileError(f"Unknown link kind {link!r}.", "Use 'shared' or 'objects' in the target profile.")
    fcompile, linker = _cross_compiler(target_dict)
    path = out_dir / LIBRARY_NAME
    executable.export_library(str(path), fcompile=fcompile)
    return path, {"kind": "shared", "linker": linker}
