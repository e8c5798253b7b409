"""A lookup table of TVM kernel latencies on this machine, keyed by workload, cached on disk.

A model is lowered the way ``compile_onnx`` lowers it (``tvm_build.lower_to_kernels``: one fused PrimFunc per
kernel); each kernel is keyed by MetaSchedule's workload key (the structural hash of the PrimFunc: its
computation and buffer shapes, not its name or the weights) and by where its schedule comes from (a record of
the tuning database, else the built-in default schedule), exactly as ``schedule_kernels`` would choose it. Only
kernels whose key is not in the table are scheduled, compiled alone and timed (``time_evaluator``, fastest of
the repeats, as the ONNX Runtime table takes its fastest call); the model's figure is the sum over the calls
``main`` makes. A search over channel widths thus compiles only the kernels of widths it has not seen.

One file per TVM version, target and thread count:
``${REPFX_CACHE:-~/.cache/repfx-deploy}/latency-lut/tvm-<version>-<hash of target and threads>.json``,
strict JSON, rewritten atomically and merged with what another process added meanwhile (as ``estimate/lut.py``).

What the sum leaves out -- the VM's per-call work, memory planning, and calls to anything but a PrimFunc
(counted in ``untimed_calls``) -- is what the predictor's recalibration against whole-model measurements fits.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import CompileError

if TYPE_CHECKING:
    import onnx

    from repfx_deploy.spec import InputSpec

log = logging.getLogger("repfx_deploy.search")

RUNTIME = "tvm"
_FORMAT = 1
# Relax ops that call one PrimFunc given as their first argument
_TIR_CALLS = ("relax.call_tir", "relax.call_tir_inplace")


@dataclass(frozen=True)
class KernelTiming:
    """How one kernel is timed: ``repeats`` repeats of at least ``min_repeat_ms`` each (TVM raises the calls
    per repeat until a repeat lasts that long, so a microsecond kernel is not timer noise); the fastest repeat
    is the figure."""

    repeats: int = 15
    min_repeat_ms: int = 2

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.min_repeat_ms < 0:
            raise ValueError(f"KernelTiming needs repeats >= 1 and min_repeat_ms >= 0, got {self!r}")


DEFAULT_KERNEL_TIMING = KernelTiming()


@dataclass(frozen=True)
class KernelEstimate:
    """One distinct kernel of a model: its name there, table key, schedule source, calls and latency per call."""

    name: str
    key: str
    schedule: str  # "tuning-db" or "default"
    calls: int
    latency_ms: float
    measured_now: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "schedule": self.schedule,
            "calls": self.calls,
            "latency_ms": round(self.latency_ms, 6),
            "measured_now": self.measured_now,
        }


@dataclass(frozen=True)
class TableEstimate:
    """The table's figure for a whole model: the sum over its kernel calls."""

    latency_ms: float
    kernels: tuple[KernelEstimate, ...]
    measured: int  # kernels compiled and timed for this estimate (0: all were in the table)
    untimed_calls: int  # calls in main to something other than a PrimFunc (library kernels, if any)
    lower_s: float
    measure_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": round(self.latency_ms, 6),
            "kernels": len(self.kernels),
            "kernel_calls": sum(k.calls for k in self.kernels),
            "kernels_measured": self.measured,
            "untimed_calls": self.untimed_calls,
            "lower_s": round(self.lower_s, 3),
            "measure_s": round(self.measure_s, 3),
        }


def runtime_version() -> str:
    import tvm

    return str(tvm.__version__)


def table_path(target: dict, threads: int, version: str | None = None, root: Path | None = None) -> Path:
    """Where the table for ``target`` (a TVM target dict), ``threads`` and the TVM ``version`` lives."""
    from repfx_deploy.compile.host import canonical_target_json
    from repfx_deploy.estimate.lut import cache_root

    version = version or runtime_version()
    machine = hashlib.sha256(f"{canonical_target_json(target)}|threads={threads}".encode()).hexdigest()[:12]
    return (root or cache_root()) / "latency-lut" / f"{RUNTIME}-{version}-{machine}.json"


@dataclass
class TvmKernelTable:
    """Measured kernel latencies for one TVM version, target and thread count (see the module docstring).

    ``measured`` counts the kernels this object compiled and timed itself (0 when every one was in the table).
    ``tuning_db``: the MetaSchedule database compile uses (default: the target's, ``default_tuning_db``).
    """

    path: Path
    target: dict
    threads: int
    version: str
    tuning_db: Path
    timing: KernelTiming = DEFAULT_KERNEL_TIMING
    entries: dict[str, dict] = field(default_factory=dict)
    measured: int = 0
    _unsaved: int = 0

    @classmethod
    def open(
        cls,
        target: dict,
        threads: int,
        root: Path | None = None,
        *,
        tuning_db: Path | None = None,
        timing: KernelTiming = DEFAULT_KERNEL_TIMING,
    ) -> TvmKernelTable:
        from repfx_deploy.compile.host import default_tuning_db
        from repfx_deploy.estimate.lut import _read

        version = runtime_version()
        path = table_path(target, threads, version, root)
        return cls(
            path=path,
            target=dict(target),
            threads=threads,
            version=version,
            tuning_db=Path(tuning_db) if tuning_db is not None else default_tuning_db(target),
            timing=timing,
            entries=_read(path),
        )

    def estimate(self, model: onnx.ModelProto, specs: tuple[InputSpec, ...]) -> TableEstimate:
        """The sum of ``model``'s kernel latencies (ONNX with static input shapes); kernels not in the table are
        compiled and timed now, and the table saved (also after a failure: what was timed is kept).
        ``CompileError`` when TVM cannot import or lower the model, or a kernel does not build."""
        import tvm

        from repfx_deploy.compile import tvm_tune
        from repfx_deploy.compile.onnx_import import import_onnx
        from repfx_deploy.compile.tvm_build import lower_to_kernels
        from repfx_deploy.compile.tvm_runtime import set_tvm_threads

        started = time.perf_counter()
        target = tvm.target.Target(self.target)
        relax_mod = import_onnx(model, specs)
        try:
            kernels_mod, _ = lower_to_kernels(relax_mod, target)
        except Exception as e:
            raise CompileError(
                f"TVM could not lower this model to kernels: {type(e).__name__}: {e}", "Report the model."
            ) from e
        calls, untimed = kernel_calls(kernels_mod)
        lower_s = time.perf_counter() - started
        db, choices = None, {}
        if tvm_tune.database_exists(self.tuning_db):
            db, choices = tvm_tune.open_database(self.tuning_db), tvm_tune.read_choices(self.tuning_db)
        set_tvm_threads(self.threads)
        before = self.measured
        kernels = []
        try:
            for gv, func in kernels_mod.functions.items():
                if gv.name_hint not in calls or not isinstance(func, tvm.tirx.PrimFunc):
                    continue
                task = tvm_tune.workload(func)
                schedule = _tuned(db, choices, task, target)
                key = f"{tvm_tune.workload_key(task)}:{'tuning-db' if schedule is not None else 'default'}"
                entry = self.entries.get(key)
                new = entry is None
                if entry is None:
                    entry = self._measure(gv.name_hint, task, schedule, target)
                    self.entries[key] = entry
                    self.measured += 1
                    self._unsaved += 1
                kernels.append(
                    KernelEstimate(
                        name=gv.name_hint,
                        key=key,
                        schedule="tuning-db" if schedule is not None else "default",
                        calls=calls[gv.name_hint],
                        latency_ms=float(entry["min_ms"]),
                        measured_now=new,
                    )
                )
        finally:
            self.save()
        return TableEstimate(
            latency_ms=sum(k.latency_ms * k.calls for k in kernels),
            kernels=tuple(kernels),
            measured=self.measured - before,
            untimed_calls=untimed,
            lower_s=lower_s,
            measure_s=time.perf_counter() - started - lower_s,
        )

    def _measure(self, name: str, task, schedule, target) -> dict:
        """Schedule ``task`` as compile would (``schedule``: the tuning record, else the default schedule), build
        it alone and time it on seeded random arguments."""
        import tvm

        from repfx_deploy.compile.tvm_ab import ab_args
        from repfx_deploy.compile.tvm_schedule import schedule_func

        if schedule is None:
            try:
                schedule = schedule_func(task["main"], target)
            except Exception as e:  # as schedule_kernels: an unusual kernel keeps TVM's plain loops
                log.debug("default schedule skipped %s: %s", name, e)
        scheduled = schedule.mod if schedule is not None else task
        try:
            built = tvm.compile(scheduled, target=target)
            module = built.jit() if hasattr(built, "jit") else built
            timer = module.time_evaluator(
                "main", tvm.cpu(), number=1, repeat=self.timing.repeats, min_repeat_ms=self.timing.min_repeat_ms
            )
            result = timer(*ab_args(task))
        except Exception as e:
            raise CompileError(
                f"TVM could not build or run the kernel {name} on its own: {type(e).__name__}: {e}",
                "Report the model; meanwhile search with --runtime onnxruntime.",
            ) from e
        repeats_ms = [float(r) * 1e3 for r in result.results]
        return {
            "name": name,
            "min_ms": min(repeats_ms),
            "median_ms": float(result.median) * 1e3,
            "repeats": len(repeats_ms),
            "args": [[list(a.shape), str(a.dtype)] for a in _arg_info(task)],
            "runtime": RUNTIME,
            "runtime_version": self.version,
            "threads": self.threads,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self) -> None:
        """Write the table (merged with entries another process saved meanwhile), atomically; a no-op if unchanged."""
        from repfx_deploy.estimate.lut import write_table

        if not self._unsaved:
            return
        header = {
            "format": _FORMAT,
            "runtime": RUNTIME,
            "runtime_version": self.version,
            "target": self.target,
            "threads": self.threads,
            "tuning_db": str(self.tuning_db),
        }
        self.entries = write_table(self.path, header, self.entries)
        self._unsaved = 0


def kernel_calls(kernels_mod) -> tuple[dict[str, int], int]:
    """How often ``main`` calls each PrimFunc (by name), and how many of its calls go elsewhere (packed
    functions: kernels the table does not time)."""
    import tvm
    from tvm import relax

    tir_ops = [tvm.ir.Op.get(name) for name in _TIR_CALLS]
    calls: dict[str, int] = {}
    untimed = 0
    for block in kernels_mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            if any(value.op.same_as(op) for op in tir_ops) and isinstance(value.args[0], tvm.ir.GlobalVar):
                name = value.args[0].name_hint
                calls[name] = calls.get(name, 0) + 1
            elif isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.call_dps_packed":
                untimed += 1
    return calls, untimed


def _tuned(db, choices: dict, task, target):
    """The tuning database's schedule for ``task`` when tuning chose one over the default, else None."""
    from repfx_deploy.compile import tvm_tune

    if db is None:
        return None
    try:
        found = tvm_tune.tuned_schedule(db, choices, task, target)
    except Exception as e:  # as schedule_kernels: a record that no longer replays must not fail the estimate
        log.warning("tuning record not applied to a kernel: %s", e)
        return None
    return None if found == "default" else found


def _arg_info(task) -> list:
    from tvm.s_tir import meta_schedule as ms

    return list(ms.arg_info.ArgInfo.from_prim_func(task["main"]))
