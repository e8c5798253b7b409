"""What each TVM 0.27 compile step buys on this host: ONNX Runtime vs TVM after every step, in one run.

For a model from ../shared/assets (resnet20, resnet56, lenet5, vit), batch 1, same thread count for all:

  ort             ONNX Runtime, CPU EP, full graph optimisation (the bar to meet)
  pipeline        relax.get_default_pipeline(target), no schedules: what "just compile it" gives
  dlight          + dlight's CPU rules (GEMV, Reduction) on the kernels they match
  nhwc            conv layout NHWC/HWIO only (weights re-laid out at compile time), no schedules
  sched_nchw      built-in default schedule on the NCHW kernels (layout unchanged)
  sched_nhwc      NHWC + default schedule, exact libm math
  default         NHWC + default schedule + fast math = compile_onnx(tune_trials=0), from model.so
  tuned           + MetaSchedule (--tune-trials N) over the default, from model.so   [--tune-trials > 0]
  ms_only         MetaSchedule (same N) on the plain pipeline, no default schedule  [--ms-only]

Timing interleaves the variants in rounds (every variant once per round, --rounds rounds) and reports
the median of the round medians, so a busy neighbour hurts all columns alike. ``ratio`` is TVM/ORT.
Tuning uses a fresh temporary database unless --tuning-db is given (then records persist and a
second run reuses them).

    python benchmarks/tvm_steps.py --model resnet20 [--threads 2] [--tune-trials 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _assets import MODELS, load_zoo

STEPS = ("ort", "pipeline", "dlight", "nhwc", "sched_nchw", "sched_nhwc", "default", "tuned", "ms_only")


class _VmRunner:
    """An in-memory executable on a Relax VM (for the intermediate steps, which are never exported)."""

    def __init__(self, executable) -> None:
        import tvm

        self._vm = tvm.runtime.vm.VirtualMachine(executable, tvm.cpu())
        self._main = self._vm["main"]

    def bind(self, inputs):
        import tvm

        tensors = [tvm.runtime.tensor(x) for x in inputs]
        return lambda: self._main(*tensors)

    def run(self, inputs):
        from repfx_deploy.compile.tvm_runtime import to_numpy

        return to_numpy(self.bind(inputs)())


def _build_step(step: str, onnx_path: Path, target_dict: dict, work: Path, args) -> tuple[object, dict]:
    """Compile one variant; return (runner, info)."""
    import tvm
    from tvm import relax

    from repfx_deploy.compile import tvm_build as B
    from repfx_deploy.compile.config import CompileConfig
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.onnx_signature import graph_input_specs

    target = tvm.target.Target(target_dict)
    info: dict = {}
    started = time.perf_counter()
    if step in ("default", "tuned"):
        out = work / step
        out.mkdir()
        trials = args.tune_trials if step == "tuned" else 0
        db = args.tuning_db or (work / "db")
        config = CompileConfig(target=target_dict, tune_trials=trials, tuning_db=db, tune_max_s=args.tune_max_s)
        manifest = B.compile_onnx(onnx_path, out, config).manifest
        info.update(kernels=manifest["kernels"], trials=manifest["tune_trials"], tune_s=manifest["tuning"].get("tune_s", 0.0))
        runner = load_tvm_runner(out, args.threads)
        info["compile_s"] = round(time.perf_counter() - started, 1)
        return runner, info
    model = B.load_onnx(onnx_path)
    mod = B.import_onnx(model, graph_input_specs(model))
    if step in ("pipeline", "dlight", "ms_only"):
        if step == "dlight":
            from tvm.s_tir import dlight

            with target:
                mod = relax.transform.LegalizeOps()(mod)
                mod = dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction())(mod)
        if step == "ms_only":
            from tvm.s_tir import meta_schedule as ms

            t0 = time.perf_counter()
            with target:
                kernels, _ = B.lower_to_kernels(mod, target, "NCHW", fast_math=False)
            db_dir = work / "db_ms_only"
            ms.relax_integration.tune_relax(
                mod=kernels, params={}, target=target, work_dir=str(db_dir), max_trials_global=args.tune_trials,
                builder=ms.builder.LocalBuilder(timeout_sec=90), num_trials_per_iter=16,
            )
            info.update(trials=args.tune_trials, tune_s=round(time.perf_counter() - t0, 1))
            kernels, counts = B.schedule_kernels(kernels, target, db_dir, default_schedule=False)
            info["kernels"] = counts.to_dict()
            executable = B.build(kernels, target)
        else:
            executable = tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
    else:
        layout = "NCHW" if step == "sched_nchw" else "NHWC"
        kernels, layout = B.lower_to_kernels(mod, target, layout, fast_math=False)
        kernels, counts = B.schedule_kernels(kernels, target, None, default_schedule=step != "nhwc")
        info.update(kernels=counts.to_dict(), layout=layout)
        executable = B.build(kernels, target)
    info["compile_s"] = round(time.perf_counter() - started, 1)
    return _VmRunner(executable), info


def _time_rounds(runners: dict, inputs, rounds: int) -> dict[str, list[float]]:
    from repfx_deploy.measure.timing import TimingConfig, time_callable

    bound = {k: r.bind(inputs) for k, r in runners.items()}
    medians: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for key, fn in bound.items():
            first = time.perf_counter()
            fn()
            slow = time.perf_counter() - first > 0.02  # untuned steps: fewer, but still repeated, calls
            cfg = TimingConfig(warmup=1 if slow else 5, repeats=3 if slow else 20, min_time_s=0.0 if slow else 0.25, remeasure=0)
            medians[key].append(time_callable(fn, cfg).median_ms)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", help=f"one of {', '.join(MODELS)}, or 'all'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", default=",".join(s for s in STEPS if s not in ("tuned", "ms_only")))
    parser.add_argument("--tune-trials", type=int, default=0, help="adds the 'tuned' step with this budget")
    parser.add_argument("--tune-max-s", type=float, default=None, help="stop starting tuning tasks after this long")
    parser.add_argument("--ms-only", action="store_true", help="adds MetaSchedule without the default schedule (slow)")
    parser.add_argument("--tuning-db", type=Path, default=None, help="persistent database (default: a fresh temp one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from repfx_deploy.compile.host import host_target
    from repfx_deploy.compile.tvm_runtime import set_tvm_threads
    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.measure.runtimes import OrtRunner
    from repfx_deploy.spec import InputSpec

    set_tvm_threads(args.threads)  # before any kernel runs: TVM's pool size is fixed on first use
    steps = [s for s in args.steps.split(",") if s]
    if args.tune_trials > 0 and "tuned" not in steps:
        steps.append("tuned")
    if args.ms_only and args.tune_trials > 0:
        steps.append("ms_only")
    zoo = load_zoo()
    target = host_target(args.threads)
    results = []
    for name in MODELS if args.model == "all" else args.model.split(","):
        build_model, shape = MODELS[name]
        specs = (InputSpec("input", shape),)
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="tvm-steps-") as scratch:
            work = Path(scratch)
            onnx_path = export_onnx(build_model(zoo).eval(), specs, work / f"{name}.onnx").path
            runners, infos = {}, {}
            for step in steps:
                if step == "ort":
                    runners[step], infos[step] = OrtRunner(onnx_path, args.threads), {}
                    continue
                logging.info("%s: building step %s", name, step)
                runners[step], infos[step] = _build_step(step, onnx_path, target, work, args)
            reference = runners["ort"].run([x])[0] if "ort" in runners else None
            medians = _time_rounds(runners, [x], args.rounds)
            ort_ms = statistics.median(medians["ort"]) if "ort" in medians else None
            print(f"\n{name}  batch 1, {args.threads} threads, {args.rounds} interleaved rounds (median of round medians)")
            print(f"{'step':<11} {'ms':>9} {'best':>9} {'ratio':>7} {'max|diff|':>10} {'compile_s':>9} {'trials':>6} {'tune_s':>7}  kernels (db/default/plain)")
            for step in steps:
                ms_ = statistics.median(medians[step])
                diff = float(np.abs(runners[step].run([x])[0] - reference).max()) if reference is not None else float("nan")
                info = infos[step]
                k = info.get("kernels")
                kern = f"{k['from_tuning_db']}/{k['default_schedule']}/{k['untuned']}" if k else ""
                ratio = ms_ / ort_ms if ort_ms else float("nan")
                print(f"{step:<11} {ms_:9.3f} {min(medians[step]):9.3f} {ratio:7.2f} {diff:10.2e} {info.get('compile_s', ''):>9} "
                      f"{info.get('trials', ''):>6} {info.get('tune_s', ''):>7}  {kern}")
                results.append({"model": name, "step": step, "median_ms": ms_, "round_medians_ms": medians[step],
                                "ratio_vs_ort": ratio, "max_abs_diff_vs_ort": diff, "threads": args.threads, **info})
            sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
