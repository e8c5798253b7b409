"""SVD factorization (the lowrank pass) at a 2x parameter cut on ResNet-56 and the CIFAR ViT, beside structured
pruning (the prune pass) at the same MACs, in one run.

For each model and method:
  1. parameters and MACs (analyze/torch_stats);
  2. top-1 on the CIFAR-10 test JPEGs right after the pass (ResNet: after BatchNorm re-calibration on 2,048
     training images, which both passes' handlers do by default);
  3. top-1 after a short knowledge-distillation fine-tune from the original model (recovery.distill: SGD
     nesterov, cosine, crop-flip, T=4, alpha=0.9, labels used), the same budget for every method;
  4. batch-1 latency with ONNX Runtime and TVM (compile_onnx default build), all variants of a model timed in
     the same interleaved rounds (prune_resnet56._latency).

Methods:
  svd-energy       lowrank pass, params_ratio (default 0.5), ranks by discarded singular-value energy;
  svd-sensitivity  the same budget, ranks by measured output error on 64 calibration images;
  prune            prune pass (L2, round_to 8, classifier whole) at macs_ratio = the MACs the first SVD model kept;
  original-ft      no pass, the same fine-tuning: the reference for what the fine-tuning alone does (the models were
                   trained on lossless CIFAR-10 and score ~10 points lower on these JPEGs).

    python benchmarks/lowrank_cifar.py [--models resnet56,vit] [--steps 200] [--batch-size 32] [--eval-samples 0]

Fine-tuning on a GPU, scoring and timing here (the passes are rebuilt here from the ranks saved there):
    REPFX_ASSETS=<copy with train-jpeg.zip and the two models> python benchmarks/lowrank_cifar.py --device cuda \
        --save-dir ft --no-latency          # on the GPU machine: passes, fine-tune, save state_dicts and ranks
    python benchmarks/lowrank_cifar.py --load-dir ft      # here: rebuild, load, score, time
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _assets import ASSETS, load_zoo
from _assets import accuracy_percent as _accuracy
from _assets import macs_params as _macs_params
from _latency import ort_tvm_latency

NORM = {  # the preprocessing each shared model was trained with (../shared/assets/README.md)
    "resnet56": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "vit": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
BUILD = {"resnet56": lambda z: z.cifar10_resnet(56), "vit": lambda z: z.cifar10_vit()}
CLASSIFIER = {"resnet56": "linear", "vit": "mlp_head.1"}


def _load(split: str, model: str, limit: int | None):
    from repfx_deploy.data.datasets import load_dataset
    from repfx_deploy.data.preprocess import Preprocess
    from repfx_deploy.spec import InputSpec

    mean, std = NORM[model]
    return load_dataset(ASSETS / "cifar10" / f"{split}-jpeg.zip", InputSpec("input", (1, 3, 32, 32)), Preprocess(size=32, mean=mean, std=std), limit=limit)


def _svd(model, params_ratio: float, criterion: str, round_to: int, calib, ranks: dict | None = None, points: int = 8, batches: int = 2):
    """The lowrank pass; with ``ranks`` (saved by an earlier run) exactly those layers at those ranks. BatchNorm
    is re-calibrated by the caller, the same way for every method."""
    from repfx_deploy.passes.lowrank import LowRankConfig
    from repfx_deploy.passes.protocol import PassContext
    from repfx_deploy.passes.registry import apply
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile

    if ranks is not None:  # saved as [scheme, rank]: "<scheme>:<rank>" pins exactly that pair
        config = LowRankConfig(ranks=tuple((name, f"{scheme}:{rank}") for name, (scheme, rank) in ranks.items()), round_to=1, bn_recalibrate=False)
    else:
        config = LowRankConfig(params_ratio=params_ratio, criterion=criterion, round_to=round_to, sensitivity_points=points,
                               sensitivity_batches=batches, sensitivity_batch_size=32, bn_recalibrate=False)
    context = PassContext(input_specs=(InputSpec("input", (1, 3, 32, 32)),), profile=get_profile("host"), calibration=calib)
    result = apply(model, config, context)
    ranks = {r["layer"]: [r["scheme"], r["rank"]] for r in result.extras["layers"] if r["scheme"] != "dense"}
    return result.module, {"factorized": result.extras["factorized"], "candidates": result.extras["candidates"], "ranks": ranks}


def _prune(model, macs_ratio: float, classifier: str):
    import torch

    from repfx_deploy.passes.prune import PruneConfig, prune

    config = PruneConfig(macs_ratio=macs_ratio, round_to=8, importance="l2", ignore=(classifier,), bn_recalibrate=False)
    result = prune(model, (torch.zeros(1, 3, 32, 32),), config)
    return result.module, {"ratio": result.extras["ratio"], "module_type": result.extras["module_type"]}


def run_model(name: str, args, zoo, threads: int) -> dict:
    import copy

    import torch

    from repfx_deploy.passes.recovery import FinetuneConfig, distill, recalibrate_bn

    base = BUILD[name](zoo)
    t0 = time.perf_counter()
    # without the test archive (a partial copy on a GPU machine) accuracy is scored later, with --load-dir
    has_test = (ASSETS / "cifar10" / "test-jpeg.zip").exists() and not args.latency_only
    test = _load("test", name, args.eval_samples or None) if has_test else None
    train = _load("train", name, args.train_samples or None)
    calib = type(train)(x=train.x[np.random.default_rng(1).choice(len(train), min(2048, len(train)), replace=False)], y=None, source="train subset")
    print(f"{name}: {len(train)} train, {len(test) if test is not None else 0} test images ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    full_macs, full_params = _macs_params(base)
    acc = _accuracy(base, test)
    rows = {"original": {"macs": full_macs, "params": full_params, "acc_pass": acc, "acc_ft": acc}}
    finetune = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, augment="crop-flip", progress=False)
    saved = json.loads((args.load_dir / "finetune.json").read_text()) if args.load_dir else {}
    device = torch.device(args.device)
    teacher = copy.deepcopy(base).to(device)
    models = {"original": base}
    states: dict = {}
    svd_macs = None
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        key = f"{name}/{method}"
        if method == "original-ft":  # no pass, the same fine-tuning: what the budget alone does on the JPEG set
            out, info = copy.deepcopy(base), {}
        elif method.startswith("svd-"):
            out, info = _svd(base, args.params_ratio, method.removeprefix("svd-"), args.round_to, calib, saved[key]["ranks"] if saved else None,
                             args.sens_points, args.sens_batches)
        elif method == "prune":
            target = args.prune_macs_ratio or (svd_macs / full_macs if svd_macs else None)
            if target is None:
                sys.exit("prune is matched to an SVD model's MACs: list an svd-* method before it, or give --prune-macs-ratio")
            try:
                out, info = _prune(base, target, CLASSIFIER[name])
            except Exception as e:  # a pass that cannot reach the target on this model is a result, not a crash
                rows[method] = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                print(json.dumps({name: {method: rows[method]}}), file=sys.stderr, flush=True)
                continue
        else:
            sys.exit(f"unknown method {method!r}")
        row = {"pass_s": round(time.perf_counter() - t0, 1), **info}
        row["macs"], row["params"] = _macs_params(out)
        if method.startswith("svd-") and svd_macs is None:
            svd_macs = row["macs"]
        row["acc_raw"] = _accuracy(out, test)
        row["bn_layers"] = recalibrate_bn(out, calib, batches=32, batch_size=64)
        row["acc_pass"] = _accuracy(out, test) if row["bn_layers"] else row["acc_raw"]
        if saved and saved[key]["macs"] != row["macs"]:
            sys.exit(f"{key}: rebuilt model has {row['macs']} MACs, the saved one {saved[key]['macs']}")
        if args.load_dir:
            tuned = copy.deepcopy(out)
            tuned.load_state_dict(torch.load(args.load_dir / f"{name}.pt", map_location="cpu", weights_only=True)[method])
            row["finetune"] = saved[key]["finetune"]
            row["acc_ft"] = _accuracy(tuned, test)
        elif args.steps > 0 and method in args.finetune_methods.split(",") and not args.latency_only:
            tuned = copy.deepcopy(out).to(device)
            t0 = time.perf_counter()
            result = distill(tuned, teacher, train, finetune)
            tuned.cpu()
            row["finetune"] = {"steps": result.steps, "batch_size": args.batch_size, "seconds": round(time.perf_counter() - t0, 1),
                               "final_loss": round(result.final_loss, 4), "device": str(device)}
            row["acc_ft"] = _accuracy(tuned, test)
            if args.save_dir:
                args.save_dir.mkdir(parents=True, exist_ok=True)
                states[method] = tuned.state_dict()
                torch.save(states, args.save_dir / f"{name}.pt")  # after every method: a cut-off run keeps what it finished
                record = json.loads((args.save_dir / "finetune.json").read_text()) if (args.save_dir / "finetune.json").exists() else {}
                record[key] = {"finetune": row["finetune"], "ranks": info.get("ranks"), "macs": row["macs"]}
                (args.save_dir / "finetune.json").write_text(json.dumps(record, indent=1))
        rows[method] = row
        if method != "original-ft":  # same structure as the original: nothing new to time
            models[method] = out
        print(json.dumps({name: {method: row}}), file=sys.stderr, flush=True)
    if not args.no_latency and (test is not None or args.latency_only):
        torch.set_num_threads(threads)
        for key, lat in ort_tvm_latency(models, (1, 3, 32, 32), threads, args.rounds).items():
            rows[key].update(lat)
    return rows


def _print(name: str, rows: dict, args, finetune_note: str) -> None:
    o = rows["original"]
    scored = "not scored (--latency-only)" if args.latency_only else f"top-1 on {args.eval_samples or 10000} CIFAR-10 test JPEGs"
    print(f"\n{name}: {scored}; {finetune_note}")
    print("| method | params (K) | params kept | MACs (M) | MACs kept | top-1 pass only % | top-1 + BN recal % | top-1 fine-tuned % "
          "| ORT ms | TVM ms | ORT speedup | TVM speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method, r in rows.items():
        if "failed" in r:
            print(f"| {method} | failed: {r['failed']} |" + " |" * 10)
            continue
        lat = ("| {:.3f} | {:.3f} | {:.2f}x | {:.2f}x |".format(r["ort_ms"], r["tvm_ms"], o["ort_ms"] / r["ort_ms"], o["tvm_ms"] / r["tvm_ms"])
               if "ort_ms" in r else "| - | - | - | - |")
        ft = f"{r['acc_ft']:.2f}" if r.get("acc_ft") is not None else "-"
        raw, bn = (f"{v:.2f}" if v is not None else "-" for v in (r.get("acc_raw", r["acc_pass"]), r["acc_pass"]))
        print(f"| {method} | {r['params'] / 1e3:.0f} | {r['params'] / o['params']:.3f} | {r['macs'] / 1e6:.1f} | {r['macs'] / o['macs']:.3f} | "
              f"{raw} | {bn} | {ft} {lat}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet56,vit")
    parser.add_argument("--methods", default="svd-energy,svd-sensitivity,prune,original-ft")
    parser.add_argument("--params-ratio", type=float, default=0.5, help="fraction of parameters the SVD models keep")
    parser.add_argument("--round-to", type=int, default=8, help="SVD ranks are multiples of it")
    parser.add_argument("--prune-macs-ratio", type=float, default=0.0, help="prune to this MACs ratio (0: the first SVD model's)")
    parser.add_argument("--steps", type=int, default=200, help="KD fine-tuning steps per method (0: none)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--finetune-methods", default="svd-energy,svd-sensitivity,prune,original-ft", help="which methods get the fine-tune")
    parser.add_argument("--sens-points", type=int, default=8, help="svd-sensitivity: ranks measured per layer")
    parser.add_argument("--sens-batches", type=int, default=2, help="svd-sensitivity: batches of 32 calibration images")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="sgd (momentum, nesterov) or adam (AdamW)")
    parser.add_argument("--train-samples", type=int, default=0, help="limit the training set (0: all 50,000)")
    parser.add_argument("--eval-samples", type=int, default=0, help="limit the test set (0: all 10,000)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="build the models and time them; no scoring or fine-tuning")
    parser.add_argument("--device", default="cpu", help="where fine-tuning runs (cpu, cuda)")
    parser.add_argument("--save-dir", type=Path, default=None, help="save fine-tuned state_dicts and ranks here")
    parser.add_argument("--load-dir", type=Path, default=None, help="load what --save-dir saved instead of fine-tuning")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from repfx_deploy.measure.environment import environment
    from repfx_deploy.measure.runtimes import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    zoo = load_zoo()
    results = {name: run_model(name, args, zoo, threads) for name in args.models.split(",")}
    if not args.latency_only and any(r["original"]["acc_pass"] is None for r in results.values()):  # no test set here (GPU copy): raw rows only
        print(json.dumps(results, indent=1, default=str))
        return
    env = environment(threads)
    note = (f"fine-tune {args.steps} steps x batch {args.batch_size} ({args.optimizer} lr {args.lr}, crop-flip, KD T=4 alpha=0.9) on the training JPEGs; "
            f"batch-1 latency, {threads} threads, {env['cpu']}; torch {env['versions']['torch']}, onnxruntime "
            f"{env['versions']['onnxruntime']}, TVM {env['versions']['apache-tvm']}; medians, all variants in the same interleaved rounds")
    for name, rows in results.items():
        _print(name, rows, args, note)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
