"""Latency estimator, predicted vs measured: the host zoo (lookup table and analytic model) and Pixel 1.

    python benchmarks/estimator.py [--threads 2] [--skip-host] [--skip-pixel1]

Host: >= 20 varied models (``_estimator_models.host_zoo`` plus the shared-asset ResNets, LeNet-5 and ViTs when
../shared/assets is present). Each is measured whole on ONNX Runtime and predicted from a fresh per-layer
lookup table whose layers are timed standalone in the same interleaved rounds as the whole model. The lookup
table predicts the fastest call (see ``lut.LatencyTable.latency_ms``); medians are printed beside it.
The correction parameters are fitted on the even-numbered models and checked on the odd-numbered ones
(held out), and the same split is used for the analytic model's host parameters. Pixel 1: the four published
TF-Lite latencies, fitted with the analytic model; fit error and leave-one-out error. Prints the fitted
[estimator] values for targets/host.toml and targets/pixel1.toml. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _estimator_models import PIXEL1_TABLE, host_zoo  # noqa: E402

from repfx_deploy.analyze.onnx_stats import onnx_stats  # noqa: E402
from repfx_deploy.data.tensors import random_inputs  # noqa: E402
from repfx_deploy.estimate.analytic import layer_costs  # noqa: E402
from repfx_deploy.estimate.fit import (  # noqa: E402
    analytic_prediction_ms,
    error_summary,
    fit_analytic,
    fit_lut_correction,
    lut_prediction_ms,
)
from repfx_deploy.estimate.lut import (  # noqa: E402
    LatencyTable,
    cold_weight_bytes,
    l2_cache_bytes,
    layer_callable,
    runtime_version,
)
from repfx_deploy.estimate.model import prepare_onnx  # noqa: E402
from repfx_deploy.estimate.ort_layers import ort_graph  # noqa: E402
from repfx_deploy.lower.onnx_export import export_onnx  # noqa: E402
from repfx_deploy.measure.environment import cpu_model  # noqa: E402
from repfx_deploy.measure.runtimes import OrtRunner  # noqa: E402
from repfx_deploy.measure.timing import TimingConfig, time_interleaved  # noqa: E402
from repfx_deploy.spec import InputSpec  # noqa: E402
from repfx_deploy.targets import EstimatorParams  # noqa: E402

# Per callable: 5 rounds, each >= 5 calls and >= 30 ms; so >= 25 calls and 150 ms per layer and per whole model.
INTERLEAVED = TimingConfig(warmup=5, repeats=25, min_time_s=0.15, max_repeats=20000)
WHOLE_KEY = "__whole_model__"


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def asset_models() -> dict:
    """The shared assets' models (skipped with a note when the folder is absent)."""
    from _assets import ASSETS

    if not (ASSETS / "zoo.py").exists():
        print(f"note: {ASSETS} absent; the host zoo has only the built-in models")
        return {}
    from _assets import load_zoo

    zoo = load_zoo()
    return {
        "resnet20 (assets)": (lambda: zoo.cifar10_resnet(20), (1, 3, 32, 32)),
        "resnet56 (assets)": (lambda: zoo.cifar10_resnet(56), (1, 3, 32, 32)),
        "lenet5 (assets)": (zoo.mnist_lenet5, (1, 1, 32, 32)),
        "cifar-vit (assets)": (zoo.cifar10_vit, (1, 3, 32, 32)),
        "mnist-vit-tiny (assets)": (zoo.mnist_vit_tiny, (1, 1, 28, 28)),
    }


def host(threads: int, tmp: Path) -> None:
    print(f"\n== host: ONNX Runtime {runtime_version()}, {threads} thread(s), {cpu_model()} ==")
    zoo = {**host_zoo(), **asset_models()}
    table = LatencyTable.open(threads, root=tmp / "cache")  # a fresh table: every layer measured in this run
    rows = []
    for name, (build, shape) in zoo.items():
        torch.manual_seed(0)
        specs = (InputSpec("input", shape),)
        path = export_onnx(build().eval(), specs, tmp / f"{len(rows)}.onnx").path
        model, specs = prepare_onnx(path, specs)
        graph = ort_graph(model, specs, threads)
        # The model's layers and the whole model are timed in alternation, round by round, so a neighbour's
        # burst of load falls on the prediction's inputs and on the measurement alike.
        unique = {layer.signature: layer for layer in graph.layers}
        fns = {sig: layer_callable(graph, layer, threads) for sig, layer in unique.items()}
        fns[WHOLE_KEY] = OrtRunner(path, threads=threads).bind(random_inputs(specs))
        stats = time_interleaved(fns, INTERLEAVED, rounds=5)
        for sig, layer in unique.items():
            table.add(layer, stats[sig])
        rows.append({"name": name, "raw": [stats[layer.signature].median_ms for layer in graph.layers],
                     "raw_min": [stats[layer.signature].min_ms for layer in graph.layers],
                     "weights": sum(cold_weight_bytes(graph.layers, l2_cache_bytes())),
                     "costs": layer_costs(model), "macs": onnx_stats(path).macs,
                     "ms": stats[WHOLE_KEY].median_ms, "ms_min": stats[WHOLE_KEY].min_ms, "spread": stats[WHOLE_KEY].spread})
    table.save()
    print(f"lookup table: {len(table.entries)} distinct layers measured ({load()})")
    train = [r for i, r in enumerate(rows) if i % 2 == 0]
    test = [r for i, r in enumerate(rows) if i % 2 == 1]
    # What `estimate` does: layer minima (the least disturbed calls) predict the whole model's fastest call.
    scale, offset_us, run_us, weight_gbs = fit_lut_correction([(r["raw_min"], r["weights"], r["ms_min"]) for r in train])
    # The same on medians, for comparison: on a busy machine these measure the neighbours too.
    med_fit = fit_lut_correction([(r["raw"], r["weights"], r["ms"]) for r in train])
    # Fixed starting points (not the profile's current values), so a rerun on the same data gives the same fit.
    base = EstimatorParams(runtime="onnxruntime", conv_gmacs=50, depthwise_gmacs=5, pointwise_gmacs=50, gemm_gmacs=20,
                           bandwidth_gbs=20, overhead_us=3)
    groups = [("conv_gmacs",), ("depthwise_gmacs",), ("pointwise_gmacs",), ("gemm_gmacs",), ("bandwidth_gbs",), ("overhead_us",)]
    analytic = fit_analytic([(r["costs"], r["ms_min"]) for r in train], base, groups)
    print(f"fitted on the {len(train)} even-numbered models: lut_scale {scale:.3f}, lut_node_offset_us {offset_us:.2f}, "
          f"lut_run_overhead_us {run_us:.2f}, lut_weight_gbs {weight_gbs:.1f} "
          f"(on medians: {med_fit[0]:.3f}, {med_fit[1]:.2f}, {med_fit[2]:.2f}, {med_fit[3]:.1f})")
    print("minima: whole-model fastest call vs the prediction from layer minima (what `estimate` does; the analytic")
    print("model is fitted to and compared with these too); medians: the same from medians, for comparison")
    print(f"\n{'model':26} {'split':5} {'MACs M':>8} {'layers':>6} {'median ms':>9} {'spread':>6} {'LUT ms':>8} {'err %':>6} "
          f"{'min ms':>8} {'LUT min':>8} {'err %':>6} {'analytic':>8} {'err %':>6}")
    for i, row in enumerate(rows):
        m_scale, m_offset, m_run, m_gbs = med_fit
        row["lut"] = lut_prediction_ms(row["raw"], m_scale, m_offset, m_run, row["weights"], m_gbs)
        row["lut_min"] = lut_prediction_ms(row["raw_min"], scale, offset_us, run_us, row["weights"], weight_gbs)
        row["ana"] = analytic_prediction_ms(row["costs"], analytic)
        print(f"{row['name']:26} {'fit' if i % 2 == 0 else 'check':5} {row['macs'] / 1e6:8.2f} {len(row['raw']):6d} {row['ms']:9.4f} "
              f"{row['spread']:6.2f} {row['lut']:8.4f} {(row['lut'] / row['ms'] - 1) * 100:6.1f} {row['ms_min']:8.4f} "
              f"{row['lut_min']:8.4f} {(row['lut_min'] / row['ms_min'] - 1) * 100:6.1f} {row['ana']:8.4f} "
              f"{(row['ana'] / row['ms_min'] - 1) * 100:6.1f}")
    for label, key, ref in (("lookup, minima", "lut_min", "ms_min"), ("lookup, medians", "lut", "ms"), ("analytic model", "ana", "ms_min")):
        for split, subset in (("fit", train), ("held out", test), ("all", rows)):
            s = error_summary([r[key] for r in subset], [r[ref] for r in subset])
            print(f"{label:16} {split:9} {s['models']:2d} models: within +-10 % {s['within_10pct'] * 100:5.1f} %, "
                  f"MAPE {s['mape_pct']:5.1f} %, worst {s['worst_pct']:+6.1f} %")
    raw_sum = error_summary([sum(r["raw_min"]) for r in rows], [r["ms_min"] for r in rows])
    print(f"uncorrected sum of standalone layers, all: MAPE {raw_sum['mape_pct']:.1f} %")
    print("\n[estimator] fitted for targets/host.toml:")
    print(f"lut_scale = {scale:.3f}\nlut_node_offset_us = {offset_us:.2f}\nlut_run_overhead_us = {run_us:.2f}\n"
          f"lut_weight_gbs = {weight_gbs:.1f}")
    for key in ("conv_gmacs", "depthwise_gmacs", "pointwise_gmacs", "gemm_gmacs", "bandwidth_gbs", "overhead_us"):
        print(f"{key} = {getattr(analytic, key):.4g}")


def pixel1(tmp: Path) -> None:
    print("\n== pixel1: published TF-Lite latencies (MobileNetV2 paper, Table 4), analytic model ==")
    models = []
    for name, (build, macs_pub, ms_pub) in PIXEL1_TABLE.items():
        torch.manual_seed(0)
        specs = (InputSpec("input", (1, 3, 224, 224)),)
        path = export_onnx(build().eval(), specs, tmp / f"pixel1-{len(models)}.onnx").path
        model, _ = prepare_onnx(path, specs)
        costs = layer_costs(model)
        macs = sum(c.macs for c in costs)
        print(f"{name:16} MACs built {macs / 1e6:6.1f} M vs published {macs_pub / 1e6:5.0f} M ({(macs / macs_pub - 1) * 100:+.1f} %)")
        models.append((name, costs, ms_pub))
    # A fixed starting point; the overhead stays at 5 us per op (TF-Lite's per-op dispatch is a few us).
    base = EstimatorParams(conv_gmacs=6, depthwise_gmacs=1.5, pointwise_gmacs=6, gemm_gmacs=6, bandwidth_gbs=5, overhead_us=5)
    # Three tied groups for four points: dense/pointwise/gemm throughput, depthwise throughput, bandwidth.
    # The per-op overhead stays as the profile states it (not identifiable from four whole-model figures).
    groups = [("conv_gmacs", "pointwise_gmacs", "gemm_gmacs"), ("depthwise_gmacs",), ("bandwidth_gbs",)]
    fitted = fit_analytic([(c, ms) for _, c, ms in models], base, groups)
    fit_pred = [analytic_prediction_ms(c, fitted) for _, c, _ in models]
    loo_pred = []
    for i in range(len(models)):
        rest = [(c, ms) for j, (_, c, ms) in enumerate(models) if j != i]
        loo_pred.append(analytic_prediction_ms(models[i][1], fit_analytic(rest, base, groups)))
    print(f"\n{'model':16} {'published ms':>12} {'fit ms':>8} {'err %':>6} {'leave-one-out ms':>16} {'err %':>6}")
    for (name, _, ms), f, lo in zip(models, fit_pred, loo_pred):
        print(f"{name:16} {ms:12.1f} {f:8.1f} {(f / ms - 1) * 100:6.1f} {lo:16.1f} {(lo / ms - 1) * 100:6.1f}")
    pub = [ms for _, _, ms in models]
    for label, pred in (("fit (all 4)", fit_pred), ("leave-one-out", loo_pred)):
        s = error_summary(pred, pub)
        print(f"{label:14}: MAPE {s['mape_pct']:5.1f} %, worst {s['worst_pct']:+6.1f} %, within +-10 % {s['within_10pct'] * 100:.0f} %")
    print("\n[estimator] fitted for targets/pixel1.toml:")
    for key in ("conv_gmacs", "depthwise_gmacs", "pointwise_gmacs", "gemm_gmacs", "bandwidth_gbs", "overhead_us"):
        print(f"{key} = {getattr(fitted, key):.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-host", action="store_true")
    parser.add_argument("--skip-pixel1", action="store_true")
    args = parser.parse_args()
    started = time.time()
    print(f"before: {load()}, {os.cpu_count()} logical CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory(prefix="repfx-estimator-bench-") as tmp:
        if not args.skip_host:
            host(args.threads, Path(tmp))
        if not args.skip_pixel1:
            pixel1(Path(tmp))
    print(f"\nafter: {load()}; took {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
