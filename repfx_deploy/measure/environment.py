"""What a measurement ran on: versions, CPU and threads. Recorded with every figure."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from pathlib import Path

_PACKAGES = ("torch", "onnx", "onnxruntime", "apache-tvm", "numpy")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    from repfx_deploy import __version__

    out["repfx-deploy"] = __version__
    return out


def environment(threads: int) -> dict:
    """A JSON-ready description of the machine a measurement was taken on."""
    import os

    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "versions": versions(),
    }
