"""Prepare once, apply many: the 2nd..Nth assignment of a recipe against the first, side by side in one run.

    python benchmarks/protocol_prepare.py                       # ResNet-56, prune (macs_ratio 0.5) + quantize (PTQ)
    python benchmarks/protocol_prepare.py --assignments 20 --threads 2 --calibration 256

The first assignment pays for everything: prune's dependency graph, importance and MACs search, quantize's
folding, capture and calibration on the pruned model. Later ones reuse what their upstream choices allow
(``passes/chain.py``). Two kinds of later assignment are timed, since they reuse different amounts:

- ``last pass``: prune at its defaults, quantize's sites drawn at random (nothing is prepared again): the
  2nd..``--assignments``th;
- ``all sites``: every prune and quantize site drawn at random (the upstream changes, so quantize is prepared
  again on each new pruned model): ``--all-sites`` more.

Also times ``run_passes`` with the equivalent configs (``with_assignment``), the no-reuse baseline, for two
assignments, and checks that the chain's module equals it. Prints each time and the ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _assets import load_zoo  # noqa: E402


def _random_assignment(space, rng: random.Random, prefixes: tuple[str, ...]) -> dict:
    out = {}
    for prefix, sp in zip(space.prefixes, space.spaces):
        for site in sp.sites:
            if prefix in prefixes:
                out[f"{prefix}/{site.name}"] = rng.choice(site.choices)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignments", type=int, default=20, help="assignments in all, the first included")
    parser.add_argument(
        "--all-sites",
        type=int,
        default=6,
        help="of the later ones, how many draw every site (each prepares quantize again: slow)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=256, help="calibration images (CIFAR-10 train, seeded)")
    parser.add_argument("--depth", type=int, default=56)
    args = parser.parse_args()

    import torch

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.passes.chain import prepare_chain
    from repfx_deploy.passes.protocol import PassContext
    from repfx_deploy.passes.registry import parse_pass, run_passes
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import get_profile

    torch.set_num_threads(args.threads)
    zoo = load_zoo()
    model = zoo.cifar10_resnet(args.depth).eval()
    x, _ = zoo.cifar10("train")
    idx = np.random.default_rng(0).permutation(len(x))[: args.calibration]
    calibration = Dataset(x=zoo.normalize_cifar_resnet(x[idx]).numpy(), y=None, source="cifar10 train (seeded)")
    specs = (InputSpec("input", (1, 3, 32, 32)),)
    # artifact_checks: a search exports and checks each candidate it keeps, as compress does, so the quantize pass
    # skips its own scratch export (a torch.export + ONNX export, ~25 s of each assignment here otherwise)
    context = PassContext(specs, get_profile("host"), calibration=calibration, reference=model, artifact_checks=True)
    configs = (parse_pass({"kind": "prune", "macs_ratio": 0.5}, 0), parse_pass({"kind": "quantize"}, 1))

    t0 = time.perf_counter()
    chain = prepare_chain(model, configs, context)
    first = chain.apply(chain.space.defaults())
    first_s = time.perf_counter() - t0
    print(
        f"ResNet-{args.depth}, prune macs_ratio 0.5 + quantize PTQ, {args.threads} thread(s), {args.calibration} calibration images"
    )
    print(f"space: {len(chain.space.keys())} sites, size {chain.space.size:.3g}")
    print(f"first assignment (prepare + apply): {first_s:.2f} s", flush=True)

    rng = random.Random(0)
    rows = {}
    runs = (("last pass", chain.prefixes[-1:], args.assignments - 1), ("all sites", chain.prefixes, args.all_sites))
    for label, prefixes, n in runs:
        times = []
        for _ in range(n):
            assignment = _random_assignment(chain.space, rng, prefixes)
            t = time.perf_counter()
            chain.apply(assignment)
            times.append(time.perf_counter() - t)
        rows[label] = times
        mean = statistics.mean(times)
        print(
            f"{n} later assignments, {label}: mean {mean:.3f} s, median {statistics.median(times):.3f} s "
            f"-> {first_s / mean:.1f}x faster than the first",
            flush=True,
        )

    fresh = []
    for _ in range(2):
        assignment = _random_assignment(chain.space, rng, chain.prefixes)
        reused = chain.apply(assignment)  # its configs are the with_assignment configs of this assignment
        t = time.perf_counter()
        plain = run_passes(model, reused.configs, context)
        fresh.append(time.perf_counter() - t)
        probe = torch.from_numpy(calibration.x[:8])
        with torch.no_grad():
            same = torch.equal(plain.module(probe), reused.module(probe))
        print(
            f"no reuse (run_passes with with_assignment configs): {fresh[-1]:.2f} s; same module as the chain's: {same}",
            flush=True,
        )
    print(
        f"ratio first / later (all sites): {first_s / statistics.mean(rows['all sites']):.1f}x; "
        f"(last pass): {first_s / statistics.mean(rows['last pass']):.1f}x; no-reuse / reuse (all sites): "
        f"{statistics.mean(fresh) / statistics.mean(rows['all sites']):.1f}x"
    )
    del first


if __name__ == "__main__":
    main()
