"""Structured pruning of ResNet-56 (CIFAR-10) to a MACs target: this project vs Torch-Pruning, side by side.

For each method, in one run on the same model, data, criterion (L2 magnitude, group-normalised), channel rounding
(8), classifier left whole, and the same fine-tuning budget:
  1. MACs and parameters (counted by analyze/torch_stats on the pruned module);
  2. top-1 on the 10,000 CIFAR-10 test JPEGs after BatchNorm re-calibration only (2,048 training images);
  3. top-1 after knowledge-distillation fine-tuning from the unpruned model on the CIFAR-10 training JPEGs
     (recovery.distill: SGD nesterov, cosine, crop-flip, T=4, alpha=0.9, labels used);
  4. batch-1 latency on this host with ONNX Runtime and TVM (compile_onnx default build), all models timed in the
     same interleaved rounds, and the speedup next to the MACs reduction.

Methods:
  ours           the full dependency graph: residual streams (with the option-A zero-pad shortcuts) are pruned too;
  ours-host      ours with the host profile's own channel multiple (targets/host.toml: 16, the AVX-512 lanes) instead
                 of 8: what `compress --target host` does by default; not comparable with Torch-Pruning's rounding;
  ours-internal  residual streams left whole (stem conv and every block's conv2 ignored): only block-internal
                 channels, the configuration Torch-Pruning can run on this model;
  tp             Torch-Pruning MagnitudePruner, default settings (it does not model the F.pad shortcut: reported
                 as failed when the pruned model does not run);
  tp-internal    Torch-Pruning with the same ignored layers as ours-internal;
  original-ft    no pruning, the same fine-tuning: the reference for what fine-tuning on the training JPEGs does
                 by itself (the original was trained on lossless CIFAR-10 and never saw JPEG artifacts).

Torch-Pruning is a benchmark-only dependency: pip install --no-deps torch-pruning==1.6.1 (the `bench` extra).
The MACs target is reached the same way for both: the smallest global ratio whose pruned model keeps at most
--macs-ratio of the MACs (bisection).

    python benchmarks/prune_resnet56.py [--steps 300 | --epochs 1] [--macs-ratio 0.5] [--methods ours,tp-internal]

Fine-tuning on a GPU, scoring here: pruning is deterministic, so the fine-tuned weights can travel alone.
    REPFX_ASSETS=<copy without test-jpeg.zip> python benchmarks/prune_resnet56.py --epochs 5 --device cuda \
        --save-dir ft5 --no-latency                     # on the GPU machine: prune, fine-tune, save state_dicts
    python benchmarks/prune_resnet56.py --epochs 5 --load-dir ft5   # here: re-prune, load, score, time
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
from _assets import ASSETS, load_zoo
from _assets import accuracy_percent as _accuracy
from _assets import macs_params as _macs_params
from _latency import ort_tvm_latency

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INTERNAL_IGNORE = ("linear", "conv1", "layer*.*.conv2")


def _load_cifar(split: str, limit: int | None):
    from repfx_deploy.data.datasets import load_dataset
    from repfx_deploy.data.preprocess import Preprocess
    from repfx_deploy.spec import InputSpec

    spec = InputSpec("input", (1, 3, 32, 32))
    return load_dataset(ASSETS / "cifar10" / f"{split}-jpeg.zip", spec, Preprocess(size=32, mean=MEAN, std=STD), limit=limit)


def _ours(model, macs_ratio: float, ignore: tuple[str, ...], round_to: int = 8):
    import torch

    from repfx_deploy.passes.prune import PruneConfig, prune

    # BatchNorm is re-calibrated below, on the training images, the same way for every method
    config = PruneConfig(macs_ratio=macs_ratio, round_to=round_to, importance="l2", ignore=ignore, bn_recalibrate=False)
    result = prune(model, (torch.zeros(1, 3, 32, 32),), config)
    return result.module, {"ratio": result.extras["ratio"], "module_type": result.extras["module_type"]}


def _tp_prune(model, ratio: float, ignore_internal: bool):
    import torch
    import torch_pruning as tp

    m = copy.deepcopy(model)
    blocks = [blk for layer in (m.layer1, m.layer2, m.layer3) for blk in layer]
    # internal: only the groups rooted at each block's conv1 (ignoring conv2 in Torch-Pruning also freezes the
    # block-internal group it consumes, so the residual groups get ratio 0 instead)
    ratios = {blk.conv1: ratio for blk in blocks} if ignore_internal else None
    pruner = tp.pruner.MagnitudePruner(
        m, torch.zeros(1, 3, 32, 32), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.0 if ignore_internal else ratio, pruning_ratio_dict=ratios, ignored_layers=[m.linear], round_to=8,
    )
    pruner.step()
    m(torch.zeros(1, 3, 32, 32))  # raises when the pruned model is inconsistent
    return m


def _tp(model, macs_ratio: float, ignore_internal: bool, full_macs: int):
    """Torch-Pruning at the smallest ratio that keeps at most ``macs_ratio`` of the MACs (bisection); when no
    ratio reaches it, the ratio with the fewest MACs tried."""
    lo, hi, tried = 0.0, 0.9, []
    for _ in range(12):
        mid = (lo + hi) / 2
        m = _tp_prune(model, mid, ignore_internal)
        kept = _macs_params(m)[0] / full_macs
        tried.append((kept, mid, m))
        if kept <= macs_ratio:
            hi = mid
        else:
            lo = mid
    under = [t for t in tried if t[0] <= macs_ratio]
    kept, ratio, m = min(under, key=lambda t: t[1]) if under else min(tried, key=lambda t: t[0])
    return m, {"ratio": round(ratio, 4), "module_type": type(m).__name__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--macs-ratio", type=float, default=0.5, help="fraction of MACs kept")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps per method (0: use --epochs)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--methods", default="ours,ours-internal,tp,tp-internal")
    parser.add_argument("--train-samples", type=int, default=0, help="limit the training set (0: all 50,000)")
    parser.add_argument("--eval-samples", type=int, default=0, help="limit the test set (0: all 10,000)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts to time at (0: the default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="where fine-tuning runs (cpu, cuda)")
    parser.add_argument("--save-dir", type=Path, default=None, help="save each method's fine-tuned state_dict here")
    parser.add_argument("--load-dir", type=Path, default=None, help="load fine-tuned state_dicts saved by --save-dir instead of fine-tuning")
    parser.add_argument("--no-latency", action="store_true", help="skip ONNX/TVM latency (e.g. on a machine without TVM)")
    args = parser.parse_args()

    import torch

    from repfx_deploy.measure.environment import environment
    from repfx_deploy.measure.runtimes import default_threads
    from repfx_deploy.passes.recovery import FinetuneConfig, distill, recalibrate_bn

    thread_counts = [int(t) or default_threads() for t in args.threads.split(",")]
    threads = max(thread_counts)
    torch.set_num_threads(threads)
    zoo = load_zoo()
    base = zoo.cifar10_resnet(56)
    t0 = time.perf_counter()
    # without the test archive (a partial copy on a GPU machine) accuracy is scored later, with --load-dir
    test = _load_cifar("test", args.eval_samples or None) if (ASSETS / "cifar10" / "test-jpeg.zip").exists() else None
    train = _load_cifar("train", args.train_samples or None)
    calib = type(train)(x=train.x[np.random.default_rng(1).choice(len(train), 2048, replace=False)], y=None, source="train subset")
    print(f"data: {len(train)} train, {len(test) if test is not None else 0} test images ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    full_macs, full_params = _macs_params(base)
    rows = {"original": {"macs": full_macs, "params": full_params, "acc_bn": _accuracy(base, test)}}
    saved = json.loads((args.load_dir / "finetune.json").read_text()) if args.load_dir else {}
    device = torch.device(args.device)
    teacher = copy.deepcopy(base).to(device)
    rows["original"]["acc_ft"] = rows["original"]["acc_bn"]
    print(json.dumps({"original": rows["original"]}), file=sys.stderr, flush=True)
    finetune = FinetuneConfig(steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, augment="crop-flip", progress=False)
    models = {"original": base}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        try:
            if method == "original-ft":  # no pruning, same fine-tuning: what the fine-tuning budget alone does
                pruned, info = copy.deepcopy(base), {"ratio": 0.0, "module_type": type(base).__name__}
            elif method == "ours":
                pruned, info = _ours(base, args.macs_ratio, ("linear",))
            elif method == "ours-host":
                from repfx_deploy.targets import get_profile

                pruned, info = _ours(base, args.macs_ratio, ("linear",), get_profile("host").channel_multiple)
            elif method == "ours-internal":
                pruned, info = _ours(base, args.macs_ratio, INTERNAL_IGNORE)
            elif method in ("tp", "tp-internal"):
                pruned, info = _tp(base, args.macs_ratio, method == "tp-internal", full_macs)
            else:
                sys.exit(f"unknown method {method!r}")
        except Exception as e:  # a pruner that cannot handle the model is a result, not a crash
            rows[method] = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            print(json.dumps({method: rows[method]}), file=sys.stderr, flush=True)
            continue
        row = {"prune_s": round(time.perf_counter() - t0, 1), **info}
        row["macs"], row["params"] = _macs_params(pruned)
        recalibrate_bn(pruned, calib, batches=32, batch_size=64)
        row["acc_bn"] = _accuracy(pruned, test)
        if args.load_dir:
            pruned.load_state_dict(torch.load(args.load_dir / f"{method}.pt", map_location="cpu", weights_only=True))
            row["finetune"] = saved[method]
        else:
            t0 = time.perf_counter()
            result = distill(pruned.to(device), teacher, train, finetune)
            pruned.cpu()
            row["finetune"] = {"steps": result.steps, "epochs": round(result.epochs, 3), "seconds": round(time.perf_counter() - t0, 1),
                               "final_loss": round(result.final_loss, 4), "device": str(device)}
            if args.save_dir:
                args.save_dir.mkdir(parents=True, exist_ok=True)
                torch.save(pruned.state_dict(), args.save_dir / f"{method}.pt")
                saved[method] = row["finetune"]
                (args.save_dir / "finetune.json").write_text(json.dumps(saved, indent=2))
        row["acc_ft"] = _accuracy(pruned, test)
        rows[method], models[method] = row, pruned
        print(json.dumps({method: row}), file=sys.stderr, flush=True)
    if args.no_latency or test is None:
        print(json.dumps(rows, indent=1))
        return
    for t in thread_counts:
        for name, lat in ort_tvm_latency(models, (1, 3, 32, 32), t, args.rounds, key_suffix=f"_t{t}").items():
            rows[name].update(lat)

    env = environment(threads)
    ft = f"{finetune.steps} steps" if finetune.steps else f"{finetune.epochs} epochs"
    print(f"\nResNet-56, CIFAR-10 test JPEGs ({len(test)}), MACs target {args.macs_ratio:.2f}, L2, round_to 8; fine-tuning "
          f"{ft} x batch {args.batch_size} (lr {args.lr}, crop-flip, KD T=4 alpha=0.9); {env['cpu']}; torch {env['versions']['torch']}, "
          f"onnxruntime {env['versions']['onnxruntime']}, TVM {env['versions']['apache-tvm']}; batch-1 medians in ms, all models "
          "timed in the same interleaved rounds per thread count")
    print("| method | threads | MACs (M) | MACs kept | params (K) | top-1 BN-recal % | top-1 fine-tuned % | ORT ms | TVM ms "
          "| ORT speedup | TVM speedup | MACs reduction | TVM speedup / MACs reduction |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    o = rows["original"]
    for name, r in rows.items():
        if "failed" in r:
            print(f"| {name} | | failed: {r['failed']} |" + " |" * 10)
            continue
        red = o["macs"] / r["macs"]
        for t in thread_counts:
            ort, tvm = r[f"ort_ms_t{t}"], r[f"tvm_ms_t{t}"]
            sp_ort, sp_tvm = o[f"ort_ms_t{t}"] / ort, o[f"tvm_ms_t{t}"] / tvm
            print(f"| {name} | {t} | {r['macs'] / 1e6:.1f} | {r['macs'] / o['macs']:.3f} | {r['params'] / 1e3:.0f} | {r['acc_bn']:.2f} | "
                  f"{r['acc_ft']:.2f} | {ort:.3f} | {tvm:.3f} | {sp_ort:.2f}x | {sp_tvm:.2f}x | {red:.2f}x | {sp_tvm / red:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
