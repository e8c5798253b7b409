"""Batch-1 latency of several torch models on ONNX Runtime and TVM (default build, untuned), side by side.

Every model is exported once, compiled once, and then all of them are timed in the same interleaved rounds,
so the ratios between them survive a noisy host (see ``measure/timing.py``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from repfx_deploy.measure.timing import TimingConfig

DEFAULT_TIMING = TimingConfig(warmup=20, repeats=100, min_time_s=1.0)


def ort_tvm_latency(
    models: dict,
    input_shape: tuple[int, ...],
    threads: int,
    rounds: int,
    timing: TimingConfig = DEFAULT_TIMING,
    key_suffix: str = "",
) -> dict[str, dict[str, float]]:
    """Returns, per model name: ``tvm_compile_s``, and for ``ort`` and ``tvm`` the median (``*_ms``), the
    minimum (``*_min_ms``) and the spread of the medians across rounds (``*_spread``), in milliseconds;
    every key ends with ``key_suffix`` (e.g. ``_t2`` when one run measures several thread counts).

    Precondition: each model takes one float input of ``input_shape`` and is in its final state (it is
    exported as it is now, in eval mode)."""
    from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.data.tensors import random_inputs
    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.measure.runtimes import OrtRunner
    from repfx_deploy.measure.timing import time_interleaved
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile, resolve_tvm_target

    specs = (InputSpec("input", tuple(input_shape)),)
    inputs = random_inputs(specs)
    target = resolve_tvm_target(get_profile("host"), threads)
    fns: dict = {}
    out: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        for i, (name, model) in enumerate(models.items()):
            work = Path(scratch) / f"model{i}"  # an index, not the name: names may hold any character
            (work / "tvm").mkdir(parents=True)
            onnx_path = export_onnx(model.eval(), specs, work / "m.onnx").path
            t0 = time.perf_counter()
            compile_onnx(onnx_path, work / "tvm", CompileConfig(target=target))
            out[name] = {f"tvm_compile_s{key_suffix}": round(time.perf_counter() - t0, 1)}
            fns[f"{name}/ort"] = OrtRunner(onnx_path, threads).bind(inputs)
            fns[f"{name}/tvm"] = load_tvm_runner(work / "tvm", threads).bind(inputs)
            print(f"compiled {name} ({out[name][f'tvm_compile_s{key_suffix}']} s)", file=sys.stderr, flush=True)
        stats = time_interleaved(fns, timing, rounds=rounds)
    for key, st in stats.items():
        name, runtime = key.rsplit("/", 1)
        out[name][f"{runtime}_ms{key_suffix}"] = round(st.median_ms, 4)
        out[name][f"{runtime}_min_ms{key_suffix}"] = round(st.min_ms, 4)
        out[name][f"{runtime}_spread{key_suffix}"] = round(st.spread, 3)
    return out
