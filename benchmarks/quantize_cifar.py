"""int8 quantization on CIFAR-10, side by side: float vs our PTQ (each calibration method) vs ONNX Runtime's
``quantize_static`` vs our QAT, accuracy on the 10,000 test JPEGs and batch-1 latency, in one run.

For ResNet-20, ResNet-56 and the CIFAR ViT from ../shared/assets:
- calibration: 512 images of the CIFAR-10 training JPEGs, a seeded shuffle (the archives are ordered by class);
- ours PTQ: the quantize pass (BN folded, per-channel symmetric int8 weights, per-tensor uint8 activations,
  ReLU folded into the quantizer, residual adds quantized), once per calibration method; exported to QDQ ONNX;
- ORT quantize_static: the same float ONNX file and the same 512 images, QDQ format, per_channel=True, everything
  else at its defaults (MinMax calibration, QInt8 activations and weights, no pre-processing);
- QAT: our PTQ (mse) then ``--qat-steps`` LSQ steps of ``--qat-batch`` images (Adam, lr 2e-5, cosine) with
  distillation from the float model, on 10,000 other training images (crop-flip augmentation);
- accuracy: every ONNX model on ONNX Runtime over the test images; latency: batch 1, all ORT variants timed in
  the same interleaved rounds, and TVM (default build) for the float and our PTQ (mse) model.

    python benchmarks/quantize_cifar.py [--models resnet20,resnet56,vit] [--qat-steps 100] [--qat-batch 32] [--methods minmax,percentile,mse]
                                        [--test 10000] [--threads 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _assets import load_zoo

BUILD = {
    "resnet20": (lambda z: z.cifar10_resnet(20), "normalize_cifar_resnet"),
    "resnet56": (lambda z: z.cifar10_resnet(56), "normalize_cifar_resnet"),
    "vit": (lambda z: z.cifar10_vit(), "normalize_cifar_vit"),
}
CALIB, QAT_TRAIN, SEED = 512, 10_000, 0


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray, threads: int) -> float:
    """Top-1 accuracy of an ONNX model on ONNX Runtime, one image at a time."""
    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.pipeline.evaluate import Deployable, EvalData, evaluate
    from repfx_deploy.targets import get_profile

    data = EvalData(eval=Dataset(x, y, "cifar10 test"), batch_size=1)
    result = evaluate(Deployable(onnx_path=path), get_profile("host"), runtimes=(), data=data, quality_runtime="onnxruntime", threads=threads)
    assert result.accuracy is not None
    return result.accuracy


def ort_quantize_static(float_path: Path, out: Path, calib: np.ndarray, input_name: str) -> float:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    t0 = time.perf_counter()
    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return time.perf_counter() - t0


def _latency(paths: dict, x1: list, x_test, y_test, threads: int, args, first: bool) -> dict:
    """Batch-1 latency at ``threads``: the ORT variants, and TVM for float vs ours (mse), all interleaved.
    Keys end in ``_t<threads>``; the TVM accuracy check (first 1,000 test images) runs once (``first``)."""
    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.measure.timing import TimingConfig
    from repfx_deploy.pipeline.evaluate import Deployable, EvalData, evaluate
    from repfx_deploy.targets import get_profile

    host = get_profile("host")
    timed = {k: p for k, p in paths.items() if k in ("float", "ort_qs", "ours_mse", "qat")}
    with_tvm = not args.no_tvm and "ours_mse" in paths
    runtimes = {k: ("onnxruntime", "tvm") if with_tvm and k in ("float", "ours_mse") else ("onnxruntime",) for k in timed}
    results = evaluate({k: Deployable(onnx_path=p) for k, p in timed.items()}, host, runtimes=runtimes, data=EvalData(timing_inputs=x1),
                       threads=threads, timing=TimingConfig(warmup=20, repeats=100, min_time_s=1.0), rounds=args.rounds, verify=False)
    out: dict = {}
    for key, result in results.items():
        for runtime, lat in result.latency.items():
            out[f"{'ort' if runtime == 'onnxruntime' else 'tvm'}_{key}_ms_t{threads}"] = round(lat.details["stats"]["median_ms"], 4)
    if with_tvm and first:
        n = min(1000, len(y_test))
        data = EvalData(eval=Dataset(x_test[:n], y_test[:n], "cifar10 test, first 1,000"), batch_size=1)
        checked = evaluate({k: Deployable(onnx_path=paths[k]) for k in ("float", "ours_mse")}, host, runtimes=(), data=data,
                           quality_runtime="tvm", threads=threads)
        for key, result in checked.items():
            out[f"tvm_{key}_acc_first_1000"] = result.accuracy
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet20,resnet56,vit")
    parser.add_argument("--methods", default="minmax,percentile,mse")
    parser.add_argument("--qat-steps", type=int, default=100, help="LSQ fine-tuning steps; 0 skips QAT")
    parser.add_argument("--qat-batch", type=int, default=32)
    parser.add_argument("--test", type=int, default=10_000, help="test images to score (all 10,000 by default)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts to time at (0: the default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-tvm", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.measure.environment import environment
    from repfx_deploy.measure.runtimes import default_threads
    from repfx_deploy.passes.protocol import PassContext
    from repfx_deploy.passes.quantize.config import QuantizeConfig
    from repfx_deploy.passes.quantize.inspect_ort import ort_kernels
    from repfx_deploy.passes.registry import apply
    from repfx_deploy.pipeline.evaluate import Deployable
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile

    zoo = load_zoo()
    thread_counts = [int(t) or default_threads() for t in args.threads.split(",")]
    threads = max(thread_counts)
    torch.set_num_threads(threads)
    xtr, _ = zoo.cifar10("train")
    xte, yte = zoo.cifar10("test")
    order = np.random.default_rng(SEED).permutation(len(xtr))
    calib_idx, train_idx = order[:CALIB], order[CALIB : CALIB + QAT_TRAIN]
    test_idx = np.sort(np.random.default_rng(SEED).permutation(len(xte))[: args.test])
    specs = (InputSpec("input", (1, 3, 32, 32)),)
    rows = []
    for name in args.models.split(","):
        build, norm_name = BUILD[name]
        norm = getattr(zoo, norm_name)
        model = build(zoo).eval()
        calib = Dataset(x=norm(xtr[calib_idx]).numpy(), y=None, source="cifar10 train (512, seeded shuffle)")
        train = Dataset(x=norm(xtr[train_idx]).numpy(), y=None, source="cifar10 train (10k others)")
        x_test, y_test = norm(xte[test_idx]).numpy(), yte[test_idx]
        row: dict = {"model": name, "threads": threads, "test_images": len(y_test)}
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            paths = {"float": export_onnx(model, specs, work / "float.onnx").path}
            input_name = Deployable(onnx_path=paths["float"]).specs()[0].name
            row["ort_quantize_static_s"] = round(ort_quantize_static(paths["float"], work / "ort_qs.onnx", calib.x, input_name), 1)
            paths["ort_qs"] = work / "ort_qs.onnx"
            for method in args.methods.split(","):
                t0 = time.perf_counter()
                context = PassContext(specs, get_profile("host"), calibration=calib, artifact_checks=True)
                q = apply(model, QuantizeConfig(calibration_method=method), context).module
                row[f"ours_{method}_quantize_s"] = round(time.perf_counter() - t0, 1)
                paths[f"ours_{method}"] = export_onnx(q, specs, work / f"ours_{method}.onnx").path
            if args.qat_steps > 0:
                config = QuantizeConfig(mode="qat", calibration_method="mse", finetune_steps=args.qat_steps,
                                        finetune_batch_size=args.qat_batch, progress=False)
                t0 = time.perf_counter()
                result = apply(model, config, PassContext(specs, get_profile("host"), calibration=calib, train=train, artifact_checks=True))
                q = result.module
                row["qat_s"] = round(time.perf_counter() - t0, 1)
                row["qat_record"] = result.extras["qat"]
                paths["qat"] = export_onnx(q, specs, work / "qat.onnx").path
            for key, path in paths.items():
                row[f"{key}_size_bytes"] = path.stat().st_size
                row[f"{key}_acc"] = ort_accuracy(path, x_test, y_test, threads)
                kernels = ort_kernels(path)
                row[f"{key}_ort_int8_ops"] = kernels.int8_ops
                row[f"{key}_ort_float_ops"] = kernels.float_compute_ops
                print(f"{name} {key}: acc {row[f'{key}_acc']:.4f}", file=sys.stderr, flush=True)
            x1 = [x_test[:1]]
            for threads in thread_counts:
                row |= _latency(paths, x1, x_test, y_test, threads, args, first=threads == thread_counts[0])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    env = environment(threads)
    print(f"\nCIFAR-10 JPEG test set ({rows[0]['test_images']} images), calibration {CALIB} training images; {env['cpu']}; "
          f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, TVM {env['versions'].get('apache-tvm')}")
    methods = args.methods.split(",")

    def g(r, key, fmt="{:.4f}"):
        return fmt.format(r[key]) if key in r else "n/a"

    def ratio(r, a, b):
        return f"{r[a] / r[b]:.2f}x" if a in r and b in r else "n/a"

    head = ["model", "float acc"] + [f"ours {m} acc" for m in methods] + ["ORT qs acc", "QAT acc", "float bytes", "ours bytes", "ORT qs bytes"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["model"], g(r, "float_acc")] + [g(r, f"ours_{m}_acc") for m in methods] + [g(r, "ort_qs_acc"), g(r, "qat_acc"),
                 g(r, "float_size_bytes", "{}"), g(r, "ours_mse_size_bytes", "{}"), g(r, "ort_qs_size_bytes", "{}")]
        print("| " + " | ".join(cells) + " |")
    print("\nbatch-1 latency, median ms, every runtime and model timed in the same interleaved rounds per thread count")
    head = ["model", "threads", "ORT float", "ORT ours", "ORT qs", "ORT QAT", "float/ours ORT", "float/qs ORT",
            "TVM float", "TVM ours", "float/ours TVM"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        for t in thread_counts:
            cells = [r["model"], str(t)] + [g(r, f"ort_{k}_ms_t{t}", "{:.3f}") for k in ("float", "ours_mse", "ort_qs", "qat")] + [
                ratio(r, f"ort_float_ms_t{t}", f"ort_ours_mse_ms_t{t}"), ratio(r, f"ort_float_ms_t{t}", f"ort_ort_qs_ms_t{t}"),
                g(r, f"tvm_float_ms_t{t}", "{:.3f}"), g(r, f"tvm_ours_mse_ms_t{t}", "{:.3f}"),
                ratio(r, f"tvm_float_ms_t{t}", f"tvm_ours_mse_ms_t{t}")]
            print("| " + " | ".join(cells) + " |")
    print("\nint8 kernels ONNX Runtime built (ours mse / ORT qs):")
    for r in rows:
        print(f"  {r['model']}: ours {r.get('ours_mse_ort_int8_ops')} float left {r.get('ours_mse_ort_float_ops')}; "
              f"ORT qs {r.get('ort_qs_ort_int8_ops')} float left {r.get('ort_qs_ort_float_ops')}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
