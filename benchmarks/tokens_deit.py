"""Token reduction on a DeiT-S-shaped ViT: batch-1 latency only (no trained weights here, so no accuracy).

Zero-TPrune's paper reports DeiT-S (224 x 224 input, 197 tokens, 12 blocks of width 384, 6 heads) at -34.7 %
FLOPs. No DeiT weights are available on this machine (timm cannot be installed, nothing is fetched), so this
builds the same architecture from timm-style blocks (``attn.qkv``/``attn.proj``, ``norm1``/``norm2``, ``mlp``)
with seeded random weights. Latency does not depend on the weights: every shape is static, so the patched
model runs the same kernels whatever tokens it picks. Accuracy and fidelity are not measured.

For each MACs cut (default -35 %) and each method, in one run: MACs from the patched model, and batch-1 latency
on ONNX Runtime and TVM (default build, untuned), all models timed in the same interleaved rounds as the dense
one. Schedules: tokens removed at every block but the last (the pass's default), and at a few blocks only
(``--fast-layers``, counts rounded to multiples of 16, Zero-TPrune with one PageRank iteration).

    python benchmarks/tokens_deit.py [--levels 0.35] [--threads 1] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
from _latency import ort_tvm_latency

from repfx_deploy.measure.timing import TimingConfig

SHAPE = (1, 3, 224, 224)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """timm's pre-norm block, MLP ratio 4, GELU."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DeiT(nn.Module):
    """DeiT-S by default: 16 x 16 patches of a 224 x 224 image, class token, learned positions, class-token head."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, classes: int = 1000, image: int = 224, patch: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="0.35", help="MACs reductions (fractions)")
    parser.add_argument("--methods", default="zero-tprune,merge")
    parser.add_argument("--fast-layers", default="2,5,8", help="blocks that remove tokens in the fast runs ('' to skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from repfx_deploy.measure.environment import environment
    from repfx_deploy.passes.protocol import PassContext
    from repfx_deploy.passes.registry import apply
    from repfx_deploy.passes.tokens import TokensConfig
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base = DeiT().eval()
    specs = (InputSpec("input", SHAPE),)
    context = PassContext(input_specs=specs, profile=get_profile("host"))
    rows: dict = {"dense": {"keep": "all 197", "flops_reduction": 0.0}}
    models: dict = {"dense": base}
    result = apply(base, TokensConfig(keep=(197,) * 11 + (1,)), context)
    rows["class token alone in last block"] = {"keep": result.extras["keep"], "flops_reduction": result.extras["flops_reduction"]}
    models["class token alone in last block"] = result.module
    fast = tuple(int(i) for i in args.fast_layers.split(",")) if args.fast_layers else None
    for level in (float(v) for v in args.levels.split(",")):
        for method in args.methods.split(","):
            for layers in (None, fast) if fast else (None,):
                extra = {"layers": layers, "token_multiple": 16} if layers else {}
                if method == "zero-tprune" and layers:
                    extra["pagerank_iterations"] = 1
                name = f"{method}@{level:.0%}" + (f" layers {args.fast_layers}, x16" if layers else "")
                result = apply(base, TokensConfig(method=method, flops_reduction=level, **extra), context)
                rows[name] = {"keep": result.extras["keep"], "flops_reduction": result.extras["flops_reduction"]}
                models[name] = result.module
                print(json.dumps({name: rows[name]}, default=str), file=sys.stderr, flush=True)
    timing = TimingConfig(warmup=5, repeats=20, min_time_s=1.0)
    for name, lat in ort_tvm_latency(models, SHAPE, args.threads, args.rounds, timing).items():
        rows[name].update(lat)

    env = environment(args.threads)
    print(f"\nDeiT-S-shaped ViT (197 tokens, 12 blocks, width 384, 6 heads), random weights: latency only; batch 1, "
          f"{args.threads} thread(s), {env['cpu']}; onnxruntime {env['versions']['onnxruntime']}, TVM {env['versions']['apache-tvm']} "
          "(untuned); medians in ms, all models in the same interleaved rounds; speedups of the medians (of the minima)")
    print("| model | keep per block | MACs reduction | ORT ms | TVM ms | ORT speedup | TVM speedup |\n|---|---|---|---|---|---|---|")
    d = rows["dense"]
    for name, r in rows.items():
        print(f"| {name} | {r['keep']} | {r['flops_reduction']:.1%} | {r['ort_ms']:.2f} | {r['tvm_ms']:.2f} "
              f"| {d['ort_ms'] / r['ort_ms']:.2f}x ({d['ort_min_ms'] / r['ort_min_ms']:.2f}x) "
              f"| {d['tvm_ms'] / r['tvm_ms']:.2f}x ({d['tvm_min_ms'] / r['tvm_min_ms']:.2f}x) |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
