"""An aarch64 device server on this machine, under qemu-user: cross-compiled artifacts really run and get checked.

``scripts/setup_aarch64_emulator.sh`` builds the root (Debian's arm64 ``python3.11`` plus the aarch64
``apache-tvm`` wheel) under ``$REPFX_CACHE/aarch64-root`` (default ``~/.cache/repfx-deploy``), with
``python-aarch64``, a wrapper running that interpreter under ``qemu-aarch64-static``. Timings from it measure
the emulator, not a board: servers started here are always marked emulated.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from repfx_deploy.errors import MeasureError
from repfx_deploy.measure.rpc.server import ServeConfig

CACHE_ENV = "REPFX_CACHE"
EMULATED_ARCHES = ("aarch64",)
_SETUP = "scripts/setup_aarch64_emulator.sh"


def emulator_root() -> Path:
    """``$REPFX_CACHE/aarch64-root``, default ``~/.cache/repfx-deploy/aarch64-root`` (it may not exist)."""
    cache = os.environ.get(CACHE_ENV)
    return (Path(cache).expanduser() if cache else Path("~/.cache/repfx-deploy").expanduser()) / "aarch64-root"


def emulator_python(root: Path | None = None) -> Path:
    """The wrapper that runs the aarch64 Python; ``MeasureError`` naming the setup script when it is not ready."""
    root = Path(root) if root is not None else emulator_root()
    wrapper = root / "python-aarch64"
    if not (root / ".repfx-ready").is_file() or not wrapper.is_file():
        raise MeasureError(
            f"No aarch64 emulator root at {root}.", f"Run {_SETUP} (as root: it installs qemu-user-static)."
        )
    if shutil.which("qemu-aarch64-static") is None:
        raise MeasureError(
            "qemu-aarch64-static is not installed.", f"Run {_SETUP} as root, or apt-get install qemu-user-static."
        )
    return wrapper


def _package_path(root: Path) -> Path:
    """A folder holding only a link to this package, for the emulated PYTHONPATH.

    Pointing PYTHONPATH at the folder this package sits in could put the host's x86 site-packages (numpy,
    TVM) ahead of the root's aarch64 ones.
    """
    import repfx_deploy

    folder = root / "host-packages"
    folder.mkdir(exist_ok=True)
    link, target = folder / "repfx_deploy", Path(repfx_deploy.__file__).resolve().parent
    if not (link.is_symlink() and link.resolve() == target):
        tmp = folder / f".repfx_deploy.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, link)
    return folder


def emulated_server_command(
    config: ServeConfig, arch: str = "aarch64", root: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` that run ``config``'s device server under qemu-user; the server is marked emulated.

    The environment is this process's (so ``REPFX_RPC_TOKEN`` / ``REPFX_RPC_TOKEN_FILE`` reach the server).
    """
    if arch not in EMULATED_ARCHES:
        raise MeasureError(f"Cannot emulate {arch!r}.", f"Emulation exists for {', '.join(EMULATED_ARCHES)}.")
    root = Path(root) if root is not None else emulator_root()
    python = emulator_python(root)
    argv = [
        str(python),
        "-m",
        "repfx_deploy.measure.rpc.server",
        "--tracker",
        str(config.tracker),
        "--key",
        config.key,
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--emulated",
    ]
    if config.custom_addr:
        argv += ["--custom-addr", config.custom_addr]
    if config.token_file is not None:  # the path only: a token on the command line would show in `ps`
        argv += ["--token-file", str(Path(config.token_file).expanduser().resolve())]
    if config.allow_remote:
        argv.append("--allow-remote")
    argv += ["--handshake-timeout", str(config.handshake_timeout_s), "--max-upload-mb", str(config.max_upload_mb)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = str(_package_path(root))
    return argv, env


def serve_emulated(config: ServeConfig, arch: str = "aarch64", root: Path | None = None) -> None:
    """Replace this process with the emulated server (so stopping this process stops it)."""
    argv, env = emulated_server_command(config, arch, root)
    os.execve(argv[0], argv, env)
