"""Token reduction on the CIFAR-10 ViT, zero-shot: Zero-TPrune vs token merging (ToMe) at the same MACs cuts.

For each MACs reduction (default -20 / -35 / -50 %) and each method, in one run on the same model and data:
  1. MACs (analyze/torch_stats on the patched model: linears, matmuls, attention, the PageRank and similarity
     products; the reduction is searched by the pass's schedule, so it lands near, not exactly on, the target);
  2. top-1 on the CIFAR-10 test JPEGs (all 10,000, or a class-balanced strided subset with --eval-samples);
  3. batch-1 latency on this host with ONNX Runtime and TVM (compile_onnx default build, untuned), every model
     timed in the same interleaved rounds as the dense model, and the speedups next to the MACs reduction.

No fine-tuning anywhere. The Zero-TPrune options are flags (defaults are the settings this benchmark found best);
token merging runs with ToMe's own choices (bipartite matching on attention keys, constant schedule).
Both methods use the same schedule shape and the same last-block rule (the CIFAR ViT reads only the class
token, so its last block computes the class token alone after attention: exact, checked by the pass).

Each method also runs removing tokens at only two blocks (``--fast-layers``, default 1,3), counts rounded to
multiples of 16 (``token_multiple``), Zero-TPrune with one PageRank iteration: the same MACs cut with two
selection steps instead of five and three token counts instead of six, which is what makes it faster.

    python benchmarks/tokens_vit.py [--levels 0.2,0.35,0.5] [--eval-samples 0] [--threads 1] [--no-latency] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _assets import ASSETS, load_zoo
from _assets import accuracy_percent as _accuracy
from _latency import ort_tvm_latency

from repfx_deploy.measure.timing import TimingConfig

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
SPECS_SHAPE = (1, 3, 32, 32)


def _load_test(limit: int):
    import numpy as np

    from repfx_deploy.data.datasets import load_dataset
    from repfx_deploy.data.preprocess import Preprocess
    from repfx_deploy.spec import InputSpec

    data = load_dataset(ASSETS / "cifar10" / "test-jpeg.zip", InputSpec("input", SPECS_SHAPE), Preprocess(size=32, mean=MEAN, std=STD))
    if limit and limit < len(data):  # the archive is ordered by class: stride, so every class is in the subset
        idx = np.arange(0, len(data), len(data) // limit)[:limit]
        data = type(data)(x=data.x[idx], y=data.y[idx], source=f"{data.source} (every {len(data) // limit}th)")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="0.2,0.35,0.5", help="MACs reductions (fractions)")
    parser.add_argument("--methods", default="zero-tprune,merge")
    parser.add_argument("--eval-samples", type=int, default=0, help="strided test subset (0: all 10,000)")
    parser.add_argument("--layers", default="", help="blocks that remove tokens, e.g. 0,1,2,3,4 (default: all but the last)")
    parser.add_argument("--fast-layers", default="1,3",
                        help="also run each method removing tokens at only these blocks (fewer selection operators and token "
                             "counts; '' to skip)")
    parser.add_argument("--fast-pagerank-iterations", type=int, default=1, help="Zero-TPrune's PageRank iterations in the fast runs")
    parser.add_argument("--fast-token-multiple", type=int, default=16, help="token_multiple of the fast runs (whole vectors for TVM)")
    parser.add_argument("--schedule", default="constant", choices=("constant", "ratio"))
    parser.add_argument("--pagerank-start", default="uniform", choices=("uniform", "cls"))
    parser.add_argument("--pagerank-iterations", type=int, default=5)
    parser.add_argument("--head-aggregation", default="mean", choices=("mean", "rms"))
    parser.add_argument("--candidate-factor", type=float, default=2.0)
    parser.add_argument("--reduction", default="merge", choices=("drop", "merge"))
    parser.add_argument("--cls-only-last", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from repfx_deploy.measure.environment import environment
    from repfx_deploy.measure.runtimes import default_threads
    from repfx_deploy.passes.protocol import PassContext
    from repfx_deploy.passes.registry import apply
    from repfx_deploy.passes.tokens import TokensConfig
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    base = load_zoo().cifar10_vit().eval()
    test = _load_test(args.eval_samples)
    specs = (InputSpec("input", SPECS_SHAPE),)
    context = PassContext(input_specs=specs, profile=get_profile("host"))
    layers = tuple(int(i) for i in args.layers.split(",")) if args.layers else None
    rows = {"dense": {"method": "-", "target": 0.0, "keep": [], "flops_reduction": 0.0, "acc": _accuracy(base, test)}}
    print(json.dumps({"dense": rows["dense"]}), file=sys.stderr, flush=True)
    models = {"dense": base}
    # controls: the patched blocks with every token kept (explicit attention instead of the exporter's MHA), and
    # the last block computing the class token alone (exact): what part of any speedup is not token removal
    for name, keep in (("patched, all kept", (65,) * 6), ("class token alone in last block", (65,) * 5 + (1,))):
        result = apply(base, TokensConfig(keep=keep), context)
        rows[name] = {"method": "-", "target": 0.0, "keep": list(keep), "flops_reduction": result.extras["flops_reduction"], "acc": _accuracy(result.module, test)}
        models[name] = result.module
        print(json.dumps({name: rows[name]}), file=sys.stderr, flush=True)
    fast_layers = tuple(int(i) for i in args.fast_layers.split(",")) if args.fast_layers else None
    runs = [(method, layers, False) for method in args.methods.split(",")]
    if fast_layers is not None:
        runs += [(method, fast_layers, True) for method in args.methods.split(",")]
    for level in (float(v) for v in args.levels.split(",")):
        for method, run_layers, fast in runs:
            suffix = f" layers {args.fast_layers}, x{args.fast_token_multiple} tokens" if fast else ""
            common = {"method": method, "flops_reduction": level, "layers": run_layers, "schedule": args.schedule, "cls_only_last": args.cls_only_last,
                      "token_multiple": args.fast_token_multiple if fast else None}
            if method == "zero-tprune":
                iterations = args.fast_pagerank_iterations if fast else args.pagerank_iterations
                suffix += f", {iterations} PageRank it." if fast else ""
                config = TokensConfig(**common, pagerank_start=args.pagerank_start, pagerank_iterations=iterations,
                                      head_aggregation=args.head_aggregation, candidate_factor=args.candidate_factor, reduction=args.reduction)
            else:
                config = TokensConfig(**common)
            name = f"{method}@{level:.0%}{suffix}"
            t0 = time.perf_counter()
            try:
                result = apply(base, config, context)
            except Exception as e:  # an unreachable target is a result, not a crash
                rows[name] = {"method": method, "target": level, "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                print(json.dumps({name: rows[name]}), file=sys.stderr, flush=True)
                continue
            s = result.extras
            rows[name] = {"method": method, "target": level, "keep": s["keep"], "macs": result.macs_after, "flops_reduction": s["flops_reduction"],
                          "pass_s": round(time.perf_counter() - t0, 1), "acc": _accuracy(result.module, test)}
            models[name] = result.module
            print(json.dumps({name: rows[name]}), file=sys.stderr, flush=True)
    if not args.no_latency:
        for name, lat in ort_tvm_latency(models, SPECS_SHAPE, threads, args.rounds, TimingConfig(warmup=20, repeats=200, min_time_s=2.0)).items():
            rows[name].update(lat)

    env = environment(threads)
    zt = (f"Zero-TPrune: PageRank start {args.pagerank_start}, {args.pagerank_iterations} iteration(s), heads {args.head_aggregation}, "
          f"candidates {args.candidate_factor}x, {args.reduction}")
    print(f"\nCIFAR-10 ViT (65 tokens, 6 blocks), top-1 on {len(test)} test JPEGs, zero-shot; {zt}; schedule {args.schedule}, "
          f"layers {args.layers or 'all but the last'}, cls_only_last {args.cls_only_last}; batch-1 latency, {threads} threads, {env['cpu']}; "
          f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, TVM {env['versions']['apache-tvm']} (untuned); "
          "medians in ms, all models timed in the same interleaved rounds; speedups of the medians (of the minima)")
    print("| model | keep per block | MACs reduction | top-1 % | vs dense (points) | ORT ms | TVM ms | ORT speedup | TVM speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    d = rows["dense"]
    for name, r in rows.items():
        if "failed" in r:
            print(f"| {name} | failed: {r['failed']} |" + " |" * 7)
            continue
        lat = ("| - | - | - | - |" if "ort_ms" not in r else
               f"| {r['ort_ms']:.3f} | {r['tvm_ms']:.3f} | {d['ort_ms'] / r['ort_ms']:.2f}x ({d['ort_min_ms'] / r['ort_min_ms']:.2f}x) "
               f"| {d['tvm_ms'] / r['tvm_ms']:.2f}x ({d['tvm_min_ms'] / r['tvm_min_ms']:.2f}x) |")
        print(f"| {name} | {r['keep'] or 'all 65 (unpatched)'} | {r['flops_reduction']:.1%} | {r['acc']:.2f} | {r['acc'] - d['acc']:+.2f} {lat}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
