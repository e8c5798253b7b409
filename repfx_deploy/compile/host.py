"""The TVM target of the machine this runs on, and where tuning records for a target live.

Targets are TVM 0.27 JSON dicts (``{"kind": "llvm", "mtriple": ..., "mcpu": ..., "num-cores": ...}``), not
strings. They are kept as plain dicts here so configs and manifests can store them as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

TUNING_DB_ENV = "REPFX_TUNING_DB"
DEFAULT_TUNING_ROOT = Path("~/.cache/repfx-deploy/tuning")

# conda-built LLVM reports e.g. "x86_64-conda-linux-gnu"; the vendor field is meaningless to codegen
# but it changes the target hash and confuses cross toolchains, so it is dropped.
_CONDA_VENDOR = re.compile(r"^(?P<arch>[^-]+)-conda-(?P<rest>.+)$")


def normalize_triple(triple: str) -> str:
    """``x86_64-conda-linux-gnu`` -> ``x86_64-linux-gnu``; other triples unchanged."""
    m = _CONDA_VENDOR.match(triple)
    return f"{m.group('arch')}-{m.group('rest')}" if m else triple


# TVM's pool workers wait for the next task by calling sched_yield this many times (TVM's default is
# 300,000) before they sleep, and the pool's destructor waits for that loop to end. On a core that another
# process keeps busy each yield costs about a time slice (measured: ~1.3 ms on the 2-core host), so a
# process could take 6-7 minutes to exit after its last TVM kernel. 10,000 bounds that at seconds, and on
# an idle host timed as TVM's default (ResNet-20/56 and the ViT at 2 threads), where 2,000 or fewer
# yields let the workers fall asleep between kernels and cost 5-100 %.
DEFAULT_SPIN_COUNT = 10_000


def ensure_thread_pool_capacity() -> None:
    """Configure TVM's thread pool before it exists; variables already set by the user win.

    ``TVM_NUM_THREADS`` becomes the CPU count: TVM sizes a thread's pool once, on first use, from it, else
    ``OMP_NUM_THREADS`` (often 1, set for other libraries), else *half* the logical CPUs on x86 (one
    thread on a 2-core VM); a pool can later shrink but never grow, and the runners here narrow it to the
    thread count they are asked for. ``TVM_THREAD_POOL_SPIN_COUNT`` becomes ``DEFAULT_SPIN_COUNT`` (why:
    above). Call this before anything runs a TVM kernel (compiling does: constant folding).
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(DEFAULT_SPIN_COUNT))


def host_target(threads: int | None = None) -> dict:
    """The TVM target JSON dict for this machine.

    ``mtriple`` is LLVM's system triple (conda vendor removed), ``mcpu`` LLVM's name for this CPU
    (e.g. ``emeraldrapids``), ``num-cores`` is ``threads`` or ``os.cpu_count()``. MetaSchedule
    requires ``num-cores``; the tuner measures with that many threads. Also calls
    ``ensure_thread_pool_capacity`` (this is usually the first TVM call a process makes).
    """
    ensure_thread_pool_capacity()
    from tvm.target import (
        codegen,  # heavy import: only when a target is actually needed
    )

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return {
        "kind": "llvm",
        "mtriple": normalize_triple(str(codegen.llvm_get_system_triple())),
        "mcpu": str(codegen.llvm_get_system_cpu()),
        "num-cores": int(threads or os.cpu_count() or 1),
    }


def canonical_target_json(target: dict) -> str:
    """The target as compact JSON with sorted keys: equal targets give equal strings."""
    return json.dumps(target, sort_keys=True, separators=(",", ":"))


def target_hash(target: dict) -> str:
    """A short, stable hash of a target dict (12 hex digits), used to name its tuning folder."""
    return hashlib.sha256(canonical_target_json(target).encode()).hexdigest()[:12]


def default_tuning_db(target: dict) -> Path:
    """``$REPFX_TUNING_DB/<hash>`` if the variable is set, else ``~/.cache/repfx-deploy/tuning/<hash>``.

    The variable names the root, not the folder, so one setting serves every target: records tuned
    for one CPU or core count are never applied to another.
    """
    root = os.environ.get(TUNING_DB_ENV)
    base = Path(root).expanduser() if root else DEFAULT_TUNING_ROOT.expanduser()
    return base / target_hash(target)
