"""Batch-1 latency on the host: torch eager vs ONNX Runtime vs TVM (default build and tuned), side by side.

For ResNet-20, ResNet-56, LeNet-5 and the CIFAR ViT from ../shared/assets, in one run of
``repfx_deploy.pipeline.evaluate``: export -> ONNX Runtime; compile untuned (timed) -> TVM; tune with a stated
trial budget (the tuning database persists, so a second run reuses it) -> TVM tuned. Prints the latency table and the ratios TVM/ORT and
TVM/torch. Every figure is a median of many timed calls after warm-up, with the same thread count; all variants of a
model are timed in the same interleaved rounds, so drift on a shared machine hurts them alike.

    python benchmarks/runtimes.py [--trials 64] [--models resnet20,lenet5] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _assets import MODELS, load_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per model for the tuned build (0: skip)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from repfx_deploy.measure.environment import environment
    from repfx_deploy.measure.runtimes import default_threads
    from repfx_deploy.measure.timing import TimingConfig
    from repfx_deploy.pipeline.evaluate import Deployable, evaluate
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile

    zoo = load_zoo()
    threads = args.threads or default_threads()
    timing = TimingConfig(warmup=20, repeats=100, min_time_s=1.0)
    rows = []
    for name in args.models.split(","):
        build, shape = MODELS[name]
        model = build(zoo).eval()
        specs = (InputSpec("input", shape),)
        # the default build times torch and ORT too; every variant in the same interleaved rounds, so drift on a
        # shared machine cannot skew their ratios
        variants = {"default": 0, "tuned": args.trials} if args.trials > 0 else {"default": 0}
        results = evaluate(
            {label: Deployable(model, input_specs=specs) for label in variants}, get_profile("host"),
            runtimes={"default": ("torch", "onnxruntime", "tvm"), "tuned": ("tvm",)}, tune_trials=variants,
            threads=threads, timing=timing, rounds=args.rounds, verify=False,
        )
        row = {"model": name, "threads": threads}
        for label, result in results.items():
            built = result.builds["compile"]
            row[f"tvm_{label}_compile_s"] = round(built["compile_s"], 1)
            row[f"tvm_{label}_trials_run"] = built["manifest"].get("tuning", {}).get("trials_run", 0)
            row[f"tvm_{label}_kernels"] = built["manifest"].get("kernels")
            row[f"tvm_{label}_max_abs_err_vs_torch"] = next(
                v["max_abs_error"] for v in result.builds["verification"] if (v["reference"], v["candidate"]) == ("torch", "tvm"))
            for runtime, lat in result.latency.items():
                key = {"torch": "torch", "onnxruntime": "ort", "tvm": f"tvm_{label}"}[runtime]
                row[f"{key}_ms"] = round(lat.details["stats"]["median_ms"], 4)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    env = environment(threads)
    print(f"\nbatch 1, {threads} thread(s), {env['cpu']}; torch {env['versions']['torch']}, "
          f"onnxruntime {env['versions']['onnxruntime']}, TVM {env['versions']['apache-tvm']}; median ms")
    print("| model | torch | ORT | TVM default | TVM tuned (trials run now) | TVM/ORT default | TVM/ORT tuned | TVM/torch best "
          "| compile default s | max err vs torch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tuned = r.get("tvm_tuned_ms")
        best = min(x for x in (r["tvm_default_ms"], tuned) if x is not None)
        tuned_cell = f"{tuned:.3f} ({r['tvm_tuned_trials_run']} run)" if tuned is not None else "n/a"
        tuned_ratio = f"{tuned / r['ort_ms']:.2f}" if tuned is not None else "n/a"
        print(f"| {r['model']} | {r['torch_ms']:.3f} | {r['ort_ms']:.3f} | {r['tvm_default_ms']:.3f} | {tuned_cell} | "
              f"{r['tvm_default_ms'] / r['ort_ms']:.2f} | {tuned_ratio} | {best / r['torch_ms']:.2f} | "
              f"{r['tvm_default_compile_s']} | {r['tvm_default_max_abs_err_vs_torch']:.2g} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
