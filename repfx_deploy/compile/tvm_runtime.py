"""Run a compiled artifact with the TVM runtime alone (no ONNX, no compiler passes).

Threads: TVM sizes its thread pool from ``TVM_NUM_THREADS`` (else ``OMP_NUM_THREADS``, else *half*
the logical CPUs on x86, i.e. one thread on a 2-core VM) when the pool is first created, and a pool
can later be narrowed but never widened (``runtime.config_threadpool``). So ``load_tvm_runner`` sets
``TVM_NUM_THREADS`` to the CPU count if nobody set it, then narrows the calling thread's pool to the
requested count. Pools are per calling thread: ``run`` and the callables from ``bind`` re-apply the
setting when called from a new thread. ``threads`` reports the count TVM says is in force.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from repfx_deploy.compile.host import ensure_thread_pool_capacity
from repfx_deploy.compile.link import LIBRARY_NAME
from repfx_deploy.compile.manifest import manifest_inputs, read_manifest
from repfx_deploy.errors import InputShapeError, MeasureError, ModelLoadError

# TVM's ThreadGroup::AffinityMode kBig: TVM's default on x86, where all cores are "big".
AFFINITY_BIG = 1


def set_tvm_threads(threads: int | None) -> int:
    """Set the calling thread's TVM pool to ``threads`` (``None``: the pool's maximum); return the count in force."""
    ensure_thread_pool_capacity()
    import tvm

    wanted = int(threads) if threads is not None else int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    tvm.get_global_func("runtime.config_threadpool")(AFFINITY_BIG, max(1, wanted))
    return int(tvm.runtime.num_threads())


class TvmRunner:
    """A compiled artifact loaded into a Relax VM; satisfies ``repfx_deploy.measure.runner.Runner``."""

    name = "tvm"

    def __init__(self, artifact_dir: Path, threads: int | None = None) -> None:
        artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(artifact_dir)
        self.inputs = manifest_inputs(self.manifest)
        self._requested_threads = threads
        self.threads = set_tvm_threads(threads)
        self._configured_thread = threading.get_ident()
        import tvm

        library = artifact_dir / self.manifest.get("library", LIBRARY_NAME)
        try:
            lib = tvm.runtime.load_module(str(library))
            self._vm = tvm.runtime.vm.VirtualMachine(lib, tvm.cpu())
            self._main = self._vm["main"]
        except Exception as e:  # a missing, foreign or truncated .so surfaces as several TVM errors
            raise ModelLoadError(
                f"Cannot load {str(library)!r} with the TVM runtime: {e}", "Recompile the model for this machine."
            ) from e
        self._device = tvm.cpu()

    def _check(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise InputShapeError(
                f"The model takes {len(self.inputs)} inputs, got {len(inputs)}.",
                f"Pass {[str(s) for s in self.inputs]}.",
            )
        arrays = []
        for spec, x in zip(self.inputs, inputs):
            x = np.asarray(x)
            if tuple(x.shape) != spec.shape or str(x.dtype) != spec.dtype:
                raise InputShapeError(
                    f"Input {spec.name!r} must be {spec}, got {x.dtype}[{','.join(map(str, x.shape))}].",
                    "Recompile for this shape, or feed the compiled shape.",
                )
            arrays.append(np.ascontiguousarray(x))
        return arrays

    def _ensure_threads(self) -> None:
        if threading.get_ident() != self._configured_thread:
            self.threads = set_tvm_threads(self._requested_threads)
            self._configured_thread = threading.get_ident()

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], object]:
        """Convert inputs to TVM tensors now; the callable runs ``main`` once (synchronously on CPU)."""
        import tvm

        tensors = [tvm.runtime.tensor(x, self._device) for x in self._check(inputs)]
        main = self._main

        def call() -> object:
            self._ensure_threads()
            return main(*tensors)

        return call

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            out = self.bind(inputs)()
        except InputShapeError:
            raise
        except Exception as e:
            raise MeasureError(
                f"The TVM artifact failed to run: {e}", "Recompile the model; check the input shapes."
            ) from e
        return to_numpy(out)


def to_numpy(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result = []
    for item in out:  # a tuple-returning main gives a runtime Array (possibly nested)
        result.extend(to_numpy(item))
    return result


def load_tvm_runner(artifact_dir: Path, threads: int | None = None) -> TvmRunner:
    """Load ``artifact_dir/model.so`` (written by ``compile_onnx``) with ``threads`` TVM threads.

    ``threads=None`` uses every thread the pool allows (the CPU count unless ``TVM_NUM_THREADS``
    says otherwise). Raises ``ModelLoadError`` if the folder is not a loadable artifact.
    """
    return TvmRunner(artifact_dir, threads)
