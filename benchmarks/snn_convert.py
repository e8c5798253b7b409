"""ANN -> SNN on the shared LeNet-5 (MNIST) and ResNet-20 (CIFAR-10): conversion-only accuracy at several T,
IIR-retrained accuracy down to T = 1, beside SpikingJelly's converter on the same models and T, in one run.

    python benchmarks/snn_convert.py --models lenet5,resnet20 --test-subset 2000        # everything, CPU
    python benchmarks/snn_convert.py --models resnet20 --device cuda --skip-convert --save-dir out/snn-gpu \
        --stage-steps 1500 --batch 128                                                   # IIR on a GPU, no test zip
    python benchmarks/snn_convert.py --models resnet20 --eval-only --load-dir out/snn-gpu --test-subset 2000

What each part needs: the repo, the assets' zoo.py (``REPFX_ASSETS`` may point at a partial copy), the model
files, MNIST ``train.npz``/``test.npz`` for LeNet-5, CIFAR-10 ``train-jpeg.zip`` for ResNet-20 training and
``test-jpeg.zip`` for its evaluation (``--save-dir`` writes each stage's SNN state_dict, ``--eval-only
--load-dir`` scores them later elsewhere); SpikingJelly (``pip install --no-deps spikingjelly loguru``) for its
column (``--no-spikingjelly`` skips it). Latency (ONNX Runtime and TVM, batch 1, this host) is taken with
``--latency``; spike statistics and the energy ESTIMATE are printed for every trained T.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _assets import ASSETS, load_zoo  # noqa: E402
from _latency import ort_tvm_latency  # noqa: E402

from repfx_deploy.data.datasets import Dataset  # noqa: E402
from repfx_deploy.measure.timing import TimingConfig  # noqa: E402
from repfx_deploy.passes.snn.config import SnnConfig  # noqa: E402
from repfx_deploy.passes.snn.convert import convert  # noqa: E402
from repfx_deploy.passes.snn.iir import iir_train  # noqa: E402
from repfx_deploy.passes.snn.stats import spike_stats  # noqa: E402

# stated accuracies of the shared models on their full test sets (../shared/assets/README.md)
ANN_STATED = {"lenet5": 99.04, "resnet20": 81.03}


def load_split(zoo, model: str, split: str, limit: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed inputs and labels; ``limit`` > 0 takes a seeded random subset (CIFAR is ordered by class)."""
    if model == "lenet5":
        x, y = zoo.mnist(split)
    else:
        x, y = zoo.cifar10(split)
    if 0 < limit < len(x):
        pick = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
        x, y = x[pick], y[pick]
    xt = zoo.normalize_mnist(x, 32) if model == "lenet5" else zoo.normalize_cifar_resnet(x)
    return xt.contiguous(), torch.as_tensor(y)


@torch.no_grad()
def accuracy(net, x: torch.Tensor, y: torch.Tensor, device: str, batch: int = 500) -> float:
    net.eval()
    hits = 0
    for i in range(0, len(x), batch):
        hits += int((net(x[i : i + batch].to(device)).argmax(1).cpu() == y[i : i + batch]).sum())
    return 100.0 * hits / len(x)


@torch.no_grad()
def sj_accuracy(ann, calib: torch.Tensor, x, y, steps: list[int], device: str, percentile: float, batch: int = 500) -> dict[int, float]:
    """SpikingJelly's rate-coding converter (layer-wise thresholds at the same percentile), run for max(steps)
    steps; the accuracy of the accumulated output after each requested step."""
    from spikingjelly.activation_based import ann2snn, functional

    loader = [(calib[i : i + 100].to(device), None) for i in range(0, len(calib), 100)]
    ann = _relu_modules(ann)
    recipe = ann2snn.RateCodingRecipe(dataloader=loader, mode=f"{percentile}%")
    snn = ann2snn.Converter(recipe=recipe, device=device).convert(copy.deepcopy(ann).to(device)).eval()
    T = max(steps)
    hits = {t: 0 for t in steps}
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch]
        functional.reset_net(snn)
        acc_out = None
        for t in range(1, T + 1):
            out = snn(xb)
            acc_out = out if acc_out is None else acc_out + out
            if t in hits:
                hits[t] += int((acc_out.argmax(1).cpu() == yb).sum())
    return {t: 100.0 * hits[t] / len(x) for t in steps}


def _relu_modules(ann):
    """The same network in the ops SpikingJelly's converter accepts (exactly equivalent): each ``F.relu`` as an
    ``nn.ReLU`` module, ``F.adaptive_avg_pool2d`` as its module, and the option-A shortcut's channel ``F.pad``
    as a concatenation with zeros. As written, the CIFAR ResNets are refused ("does not support function node
    relu", then "... pad")."""
    import operator

    import torch.fx as fx
    import torch.nn.functional as F

    gm = fx.symbolic_trace(copy.deepcopy(ann))
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op != "call_function":
            continue
        if node.target in (F.relu, torch.relu):
            gm.add_submodule(f"relu_module_{i}", torch.nn.ReLU())
            node.op, node.target, node.args, node.kwargs = "call_module", f"relu_module_{i}", (node.args[0],), {}
        elif node.target is F.adaptive_avg_pool2d:
            gm.add_submodule(f"avgpool_module_{i}", torch.nn.AdaptiveAvgPool2d(node.args[1]))
            node.op, node.target, node.args, node.kwargs = "call_module", f"avgpool_module_{i}", (node.args[0],), {}
        elif node.target is F.pad:
            x, pads = node.args[0], tuple(node.args[1])
            if len(pads) != 6 or any(pads[:4]) or pads[4] != pads[5]:
                continue
            with gm.graph.inserting_before(node):
                zero = gm.graph.call_function(operator.mul, (x, 0.0))
                side = gm.graph.call_function(operator.getitem, (zero, (slice(None), slice(0, pads[4]))))
                cat = gm.graph.call_function(torch.cat, ([side, x, side], 1))
            node.replace_all_uses_with(cat)
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def snn_config(args, model: str) -> SnnConfig:
    stages = tuple(int(t) for t in args.stages.split(","))
    return SnnConfig(
        timesteps=stages[-1],
        iir=True,
        iir_stages=stages,
        percentile=args.percentile,
        steps_per_stage=args.stage_steps,
        epochs_per_stage=args.stage_epochs,
        batch_size=args.batch,
        lr=args.lr,
        kd_alpha=args.kd_alpha,
        temperature=args.kd_temperature,
        augment="crop-flip" if model == "resnet20" else "none",
        maxpool=args.maxpool,
        checkpoint_dir=Path(args.save_dir) / model / "ckpt" if args.save_dir else None,
        seed=args.seed,
        progress=args.progress,
    )


def run_model(zoo, model: str, args, results: dict) -> None:
    device = args.device
    ann = (zoo.mnist_lenet5() if model == "lenet5" else zoo.cifar10_resnet(20)).to(device).eval()
    res = results.setdefault(model, {"ann_stated": ANN_STATED[model]})
    have_test = (ASSETS / ("mnist/test.npz" if model == "lenet5" else "cifar10/test-jpeg.zip")).exists() and not args.no_test
    xte = yte = None
    if have_test:
        xte, yte = load_split(zoo, model, "test", args.test_subset)
        res["test_samples"] = len(xte)
        res["ann"] = accuracy(ann, xte, yte, device)
        print(f"[{model}] ANN top-1 on {len(xte)} test samples: {res['ann']:.2f} %", flush=True)
    started = time.perf_counter()
    if args.eval_only:
        xtr = ytr = None
        calib = None
    else:
        xtr, ytr = load_split(zoo, model, "train", args.train_subset, seed=1)
        calib = xtr[: args.calib]
        print(f"[{model}] train samples {len(xtr)} loaded in {time.perf_counter() - started:.1f} s", flush=True)
    conv_T = [int(t) for t in args.convert_T.split(",")]

    if not args.skip_convert and not args.eval_only and have_test:
        snn, report = convert(ann, calib.to(device).split(100), SnnConfig(timesteps=max(conv_T), percentile=args.percentile, maxpool=args.maxpool))
        res["conversion"] = report.to_dict()
        res["ours_convert"] = {}
        for T in [] if args.sj_only else conv_T:
            snn.set_timesteps(T)
            t0 = time.perf_counter()
            res["ours_convert"][T] = accuracy(snn, xte, yte, device, batch=max(50, 4000 // T))
            print(f"[{model}] ours, conversion only, T={T}: {res['ours_convert'][T]:.2f} % ({time.perf_counter() - t0:.1f} s)", flush=True)
        if not args.no_spikingjelly:
            t0 = time.perf_counter()
            try:
                sj_T = conv_T if args.sj_only else conv_T + [t for t in (5, 2, 1) if t not in conv_T]
                res["spikingjelly_convert"] = sj_accuracy(ann, calib, xte, yte, sj_T, device, args.percentile)
                print(f"[{model}] SpikingJelly: {res['spikingjelly_convert']} ({time.perf_counter() - t0:.1f} s)", flush=True)
            except Exception as e:  # its converter refuses some graphs (e.g. functional F.relu): record, go on
                res["spikingjelly_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                print(f"[{model}] SpikingJelly failed: {res['spikingjelly_error']}", flush=True)

    if args.skip_iir:
        return
    config = snn_config(args, model)
    save = Path(args.save_dir) / model if args.save_dir else None
    load = Path(args.load_dir) / model if args.load_dir else None
    res["iir"] = {}

    def after_stage(T, net):
        rec = {}
        if save is not None:
            from repfx_deploy.atomic import atomic_file

            with atomic_file(save / f"snn-T{T}.pt") as tmp:
                torch.save(net.state_dict(), tmp)
        if have_test:
            rec["accuracy"] = accuracy(net, xte, yte, device, batch=max(50, 4000 // T))
        print(f"[{model}] IIR stage T={T} done: {rec} ({time.perf_counter() - started:.1f} s since start)", flush=True)
        return rec

    if args.eval_only:
        snn, _ = convert(ann, None, config)
        snn.to(device)
        for T in config.stages():
            path = load / f"snn-T{T}.pt"
            if not path.exists():
                print(f"[{model}] no {path}: stage T={T} not evaluated", flush=True)
                continue
            snn.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            snn.set_timesteps(T)
            res["iir"][T] = {"accuracy": accuracy(snn, xte, yte, device, batch=max(50, 4000 // T))}
            res["iir"][T]["spikes"] = spike_stats(snn, xte[:256].to(device).split(64))
            print(f"[{model}] IIR T={T}: {res['iir'][T]['accuracy']:.2f} %", flush=True)
    else:
        snn, _ = convert(ann, calib.to(device).split(100), config)
        snn.to(device)
        if args.init_from:
            # the state_dict holds the weights, thresholds and leaks only: it loads into any maxpool placement
            snn.load_state_dict(torch.load(args.init_from, map_location=device, weights_only=True))
            print(f"[{model}] IIR starts from {args.init_from}", flush=True)
        train = Dataset(x=xtr.numpy(), y=ytr.numpy(), source=f"{model} train")
        records = iir_train(snn, ann, train, config, after_stage=after_stage)
        for rec in records:
            res["iir"][rec["timesteps"]] = rec
            snn.set_timesteps(rec["timesteps"])
        for T in config.stages():
            if save is not None:
                snn.load_state_dict(torch.load(save / f"snn-T{T}.pt", map_location=device, weights_only=True))
            snn.set_timesteps(T)
            probe = (xte if have_test else calib)[:256].to(device)
            res["iir"][T]["spikes"] = spike_stats(snn, probe.split(64))
    if args.latency:
        res["latency_ms"] = latency(ann.cpu(), snn.cpu(), model, config.stages())


def latency(ann, snn, model: str, stages, rounds: int = 5) -> dict:
    """Batch-1 latency on this host, 1 thread, of the ANN and the SNN at each T, on ONNX Runtime and TVM, all
    interleaved. A CPU computes every synapse densely, whatever the spikes: the weights do not matter here."""
    nets = {"ann": ann}
    for T in stages:
        net = copy.deepcopy(snn)
        net.set_timesteps(T)
        nets[f"snn T={T}"] = net
    shape = (1, 1, 32, 32) if model == "lenet5" else (1, 3, 32, 32)
    out = ort_tvm_latency(nets, shape, threads=1, rounds=rounds, timing=TimingConfig(warmup=10, repeats=100, min_time_s=0.5))
    for name, r in out.items():
        print(f"[{model}] {name}: ORT {r['ort_ms']:.3f} ms (min {r['ort_min_ms']:.3f}), "
              f"TVM {r['tvm_ms']:.3f} ms (min {r['tvm_min_ms']:.3f}), medians, batch 1, 1 thread", flush=True)
    return out


def print_table(results: dict) -> None:
    for model, r in results.items():
        if "spikingjelly_error" in r:
            print(f"SpikingJelly's converter failed on {model}: {r['spikingjelly_error']}")
        print(f"\n## {model}: ANN {r.get('ann', float('nan')):.2f} % on {r.get('test_samples', 0)} test samples (stated {r['ann_stated']} % on all)")
        if "ours_convert" in r:
            print("| T | ours (conversion only) | SpikingJelly (conversion) | ours - SJ |\n|---|---|---|---|")
            for T, a in r["ours_convert"].items():
                sj = r.get("spikingjelly_convert", {}).get(T)
                print(f"| {T} | {a:.2f} % | {'-' if sj is None else f'{sj:.2f} %'} | {'-' if sj is None else f'{a - sj:+.2f}'} |")
        if r.get("iir"):
            print("| T | ours IIR | SpikingJelly (conversion) | ANN - ours | spike rate | synaptic ops / ANN MACs | energy ESTIMATE SNN/ANN |\n|---|---|---|---|---|---|---|")
            for T, rec in r["iir"].items():
                sj = r.get("spikingjelly_convert", {}).get(T)
                acc = rec.get("accuracy")
                sp = rec.get("spikes", {})
                ops = sp.get("snn_synaptic_ops", 0) / max(sp.get("ann_macs", 1), 1)
                est = sp.get("energy_estimate", {}).get("snn_over_ann")
                gap = "-" if acc is None or "ann" not in r else f"{r['ann'] - acc:.2f}"
                print(f"| {T} | {'-' if acc is None else f'{acc:.2f} %'} | {'-' if sj is None else f'{sj:.2f} %'} | "
                      f"{gap} | {sp.get('mean_spike_rate', float('nan')):.4f} | {ops:.3f} | {est} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet5,resnet20")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--convert-T", default="32,16,8,4")
    p.add_argument("--stages", default="5,4,3,2,1", help="IIR stages, decreasing")
    p.add_argument("--stage-steps", type=int, default=0, help="optimizer steps per stage (0: --stage-epochs)")
    p.add_argument("--stage-epochs", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kd-alpha", type=float, default=0.5)
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0, help="training seed (batch order)")
    p.add_argument("--percentile", type=float, default=99.9)
    p.add_argument("--maxpool", default="count", choices=("count", "or", "current"), help="max-pools after neurons (LeNet-5)")
    p.add_argument("--init-from", default=None, help="start IIR from this saved SNN state_dict (e.g. an earlier run's "
                   "snn-T2.pt) instead of the converted thresholds; one model only")
    p.add_argument("--calib", type=int, default=1024, help="training images used for threshold balancing")
    p.add_argument("--train-subset", type=int, default=0, help="0: the whole training set")
    p.add_argument("--test-subset", type=int, default=0, help="0: the whole test set; else a seeded random subset")
    p.add_argument("--no-test", action="store_true", help="do not evaluate (e.g. the test data is not on this machine)")
    p.add_argument("--skip-convert", action="store_true")
    p.add_argument("--skip-iir", action="store_true")
    p.add_argument("--no-spikingjelly", action="store_true")
    p.add_argument("--sj-only", action="store_true", help="conversion: run SpikingJelly's column only")
    p.add_argument("--save-dir", default=None)
    p.add_argument("--load-dir", default=None)
    p.add_argument("--eval-only", action="store_true", help="score the state_dicts in --load-dir (no training)")
    p.add_argument("--latency", action="store_true", help="ONNX Runtime and TVM batch-1 latency of ANN and SNN per T")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    if args.eval_only and not args.load_dir:
        sys.exit("--eval-only needs --load-dir")
    if args.init_from and "," in args.models:
        sys.exit("--init-from is one model's state_dict: give one --models")
    if args.threads:
        torch.set_num_threads(args.threads)
    zoo = load_zoo()
    results: dict = {"args": vars(args), "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    models: dict = {}
    began = time.perf_counter()
    for model in args.models.split(","):
        run_model(zoo, model, args, models)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({**results, "models": models}, indent=1, default=str))
    print_table(models)
    print(f"\ntotal {time.perf_counter() - began:.1f} s on {results['device']}")


if __name__ == "__main__":
    main()
