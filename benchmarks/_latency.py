"""Batch-1 latency of several torch models on ONNX Runtime and TVM (default build, untuned), side by side.

Every model is exported once, compiled once (``repfx_deploy.pipeline.evaluate``, which checks each build against
the one before), and then all of them are timed in the same interleaved rounds, so the ratios between them survive
a noisy host (see ``measure/timing.py``).
"""

from __future__ import annotations

import sys

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
    from repfx_deploy.pipeline.evaluate import Deployable, evaluate
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile

    specs = (InputSpec("input", tuple(input_shape)),)
    results = evaluate({name: Deployable(model.eval(), input_specs=specs) for name, model in models.items()}, get_profile("host"),
                       runtimes=("onnxruntime", "tvm"), threads=threads, timing=timing, rounds=rounds, verify=False)
    out: dict = {}
    for name, result in results.items():
        compile_s = round(result.builds["compile"]["compile_s"], 1)
        out[name] = {f"tvm_compile_s{key_suffix}": compile_s}
        print(f"compiled {name} ({compile_s} s)", file=sys.stderr, flush=True)
        for runtime, key in (("onnxruntime", "ort"), ("tvm", "tvm")):
            st = result.latency[runtime].details["stats"]
            out[name][f"{key}_ms{key_suffix}"] = round(st["median_ms"], 4)
            out[name][f"{key}_min_ms{key_suffix}"] = round(st["min_ms"], 4)
            out[name][f"{key}_spread{key_suffix}"] = round(st["p90_ms"] / st["median_ms"] - 1.0, 3)
    return out
