"""Shared code of benchmarks/search_resnet56.py and search_vit.py: the search against uniform baselines.

One run, per runtime and budget (a fraction of the dense model's measured latency):

1. the search itself (``pipeline.search.run_search``: trials, the front measured whole, the top K fine-tuned, the
   chosen model shipped), timed end to end;
2. the uniform baselines, every family the recipe allows: each pass alone at one setting for all its sites (a kept
   fraction of channels, tokens or ranks; int8 everywhere), and all passes at once. Each level is measured whole
   on the runtime; per family the one with the best proxy accuracy among those at or under the searched model's
   measured latency is kept;
3. the same fine-tune (the recover pass of ``--finetune-steps`` KD steps, ``recipe_out.finetune_configs``) for the
   searched model (rebuilt from its ``recipe.toml``), each kept baseline and the dense model;
4. accuracy on the CIFAR-10 TEST set (the search never sees it) and batch-1 latency of all of them timed side by
   side in interleaved rounds (``pipeline.evaluate``).

``--samplers tpe,nsga2,...`` also runs the trials alone once per sampler on one shared scorer, at equal trials,
and prints each one's hypervolume of (proxy accuracy, predicted latency) over the feasible trials.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _assets import ASSETS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Bench:
    name: str
    model_file: str  # under ASSETS/models
    arch: str  # zoo_arch:<fn> (tests/fixtures)
    recipe: str  # under benchmarks/recipes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


LEVELS = (0.4, 0.55, 0.7, 0.85)  # kept fractions the uniform baselines are tried at


def parse_args(bench: Bench, doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=bench.recipe, help="recipe under benchmarks/recipes (its passes: the space)")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--train-samples", type=int, default=4096, help="CIFAR-10 train images (proxy splits, fine-tune)")
    p.add_argument("--test-samples", type=int, default=10000, help="CIFAR-10 test images for the final accuracy")
    p.add_argument("--budgets", default="0.5,0.3", help="fractions of the dense model's measured latency")
    p.add_argument("--runtimes", default="tvm,onnxruntime")
    p.add_argument("--sampler", default="tpe", help="the sampler of the main search")
    p.add_argument("--samplers", default="", help="compare these samplers' hypervolume at --sampler-trials")
    p.add_argument("--sampler-trials", type=int, default=16)
    p.add_argument("--no-search", action="store_true", help="only the sampler comparison")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)), help="kept fractions of the uniform baselines")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="", help="folder for the studies and data (default: a temporary one)")
    p.add_argument("--json", default="", help="write every figure of the run here (strict JSON)")
    return p.parse_args()


def main(bench: Bench, doc: str) -> None:
    args = parse_args(bench, doc)
    import torch

    if not (ASSETS / "models" / bench.model_file).exists():
        sys.exit(f"needs the shared assets at {ASSETS}")
    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"search-{bench.name}-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_npz, test = _data(bench, args, work)
    doc: dict[str, Any] = {
        "bench": bench.name,
        "args": vars(args),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.processor() or platform.machine(),
        "runs": [],
        "samplers": [],
    }
    print(
        f"{bench.name}: recipe {args.recipe}, {args.trials} trials, {args.finetune_steps} fine-tune steps, "
        f"{args.train_samples} train / {len(test)} test images, {args.threads} thread(s), work {work}",
        flush=True,
    )
    for runtime in [r for r in args.runtimes.split(",") if r]:
        setup, request, dense_ms = setup_for(bench, args, runtime, train_npz, work)
        print(
            f"\n== {runtime}: dense {dense_ms:.3f} ms (measured whole), space {setup.chain.space.size:.3g} "
            f"({len(setup.chain.space.keys())} sites)",
            flush=True,
        )
        if not args.no_search:
            for fraction in [float(f) for f in args.budgets.split(",") if f]:
                row = run_budget(bench, args, setup, request, dense_ms, fraction, test, work)
                doc["runs"].append(row)
                print_run(row)
        if args.samplers:
            fraction = float(args.budgets.split(",")[0])
            result = compare_samplers(args, setup, request, dense_ms * fraction, work / f"samplers-{runtime}")
            doc["samplers"].append(result)
            print_samplers(result)
    doc["total_s"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {doc['total_s']:.0f} s", flush=True)
    if args.json:
        from repfx_deploy.report.strict_json import write

        write(Path(args.json), doc)


def _data(bench: Bench, args: argparse.Namespace, work: Path):
    """The training subset as a preprocessed .npz (the recipe's train and calibration data) and the test set."""
    from repfx_deploy.data.datasets import load_dataset
    from repfx_deploy.data.preprocess import Preprocess
    from repfx_deploy.spec import InputSpec

    spec = InputSpec("input", (1, 3, 32, 32))
    pre = Preprocess(mean=bench.mean, std=bench.std)
    train_npz = work / f"train-{args.train_samples}-{args.seed}.npz"
    if not train_npz.exists():
        train = load_dataset(ASSETS / "cifar10" / "train-jpeg.zip", spec, pre, limit=args.train_samples, seed=args.seed)
        np.savez(train_npz, x=train.x.astype(np.float32), y=train.y)
    test = load_dataset(ASSETS / "cifar10" / "test-jpeg.zip", spec, pre, limit=args.test_samples, seed=args.seed)
    return train_npz, test


def hypervolume(points: list[tuple[float, float]], latency_ref: float) -> float:
    """The area dominated by ``points`` (accuracy up, latency down) above accuracy 0 and under ``latency_ref``,
    with latency as a fraction of ``latency_ref``: 1.0 would be 100 % accuracy at zero latency."""
    pts = sorted((lat / latency_ref, acc) for acc, lat in points if lat < latency_ref)
    area, best = 0.0, 0.0
    for i, (lat, acc) in enumerate(pts):
        best = max(best, acc)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else 1.0
        area += best * (nxt - lat)
    return area


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_run(row: dict[str, Any]) -> None:
    print(
        f"\n{row['runtime']}, budget {row['fraction']:.0%} of dense = {row['budget_ms']:.3f} ms; "
        f"search + fine-tune {row['search_s']:.0f} s (compile {row['compile_s']:.0f} s = "
        f"{_fmt(row['compile_share_pct'], '.1f')} % of it)"
    )
    print("| model | setting | latency ms (side by side) | x dense | test top-1 % | vs searched |")
    print("|---|---|---|---|---|---|")
    searched = row["models"].get("searched", {}).get("test_accuracy")
    for name, m in row["models"].items():
        delta = None if searched is None or m.get("test_accuracy") is None else m["test_accuracy"] - searched
        print(
            f"| {name} | {m.get('setting', '')} | {_fmt(m.get('latency_ms'), '.3f')} | "
            f"{_fmt(m.get('speedup'), '.2f')} | {_fmt(m.get('test_accuracy'))} | {_fmt(delta, '+.2f')} |"
        )
    pred = row.get("predictor") or {}
    print(
        f"predictor on measured trials: MAPE {_fmt(pred.get('mape_pct'), '.1f')} %, Kendall tau "
        f"{_fmt(pred.get('kendall_tau'), '.2f')} (n={pred.get('n')})"
    )
    for goal in row["goals"]:
        print(f"goal: {goal['goal']}: {goal['figure']} -> {'met' if goal['met'] else 'NOT met'}")
    sys.stdout.flush()


def print_samplers(result: dict[str, Any]) -> None:
    print(
        f"\nsamplers, {result['runtime']}, budget {result['budget_ms']:.3f} ms, {result['trials']} trials each "
        f"(the first {result['seeds']} are the uniform seeds, as in the search)"
    )
    print("| sampler | hypervolume | feasible trials | best feasible proxy % | time s |")
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['sampler']} | {r['hypervolume']:.4f} | {r['feasible']} | {_fmt(r['best_accuracy'])} | "
            f"{r['time_s']:.0f} |"
        )
    print(f"best hypervolume: {result['best']}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------- the runs


def setup_for(bench: Bench, args: argparse.Namespace, runtime: str, train_npz: Path, work: Path):
    """The search's own setup for ``runtime`` (model, data, prepared chain, scorer, predictor), the request the
    searches are made of, and the dense model's whole-model latency on the runtime."""
    from repfx_deploy.ingest.loader import LoadOptions
    from repfx_deploy.pipeline.search import SearchRequest, prepare_search
    from repfx_deploy.recipe import load_recipe
    from repfx_deploy.search.config import SearchConfig

    recipe = load_recipe(ROOT / "benchmarks" / "recipes" / args.recipe).with_overrides(
        target="host", threads=args.threads, train=train_npz, calibration=train_npz
    )
    request = SearchRequest(
        model_path=ASSETS / "models" / bench.model_file,
        out_dir=work / "unused",
        recipe=recipe,
        config=SearchConfig(runtime=runtime, seed=args.seed),  # type: ignore[arg-type]
        load=LoadOptions(arch=bench.arch, python_path=(ROOT / "tests" / "fixtures",)),
    )
    setup = prepare_search(request)
    from repfx_deploy.pipeline.evaluate import Deployable, evaluate

    dense = setup.chain.apply(unchanged(setup.chain.space))
    # the budgets are fractions of this: the lower of two whole measurements, so one slow moment of a shared
    # host does not loosen them
    again = (
        evaluate(
            Deployable(dense.module, input_specs=setup.loaded.input_specs),
            setup.profile,
            runtimes=[runtime],
            threads=setup.threads,
            verify=False,
        )
        .latency[runtime]
        .latency_ms
    )
    dense_ms = min(setup.predictor.measure(dense).latency_ms, again)
    saved = work / f"dense-{runtime}.json"  # a rerun on the same --work resumes its studies, on the same budgets
    if saved.exists():
        dense_ms = float(json.loads(saved.read_text())["latency_ms"])
    else:
        saved.write_text(json.dumps({"latency_ms": dense_ms}))
    return setup, request, dense_ms


def unchanged(space) -> dict[str, Any]:
    plain = {f"{p}/{s.name}": s.unchanged for p, sp in zip(space.prefixes, space.spaces) for s in sp.sites}
    return downstream_names(space, plain)


def level_choice(site, kind: str, level: float) -> Any:
    """The choice of ``site`` a uniform setting at kept fraction ``level`` gives: int8 for quantize; the count
    nearest ``level`` of the full one for channels and tokens; for ranks, that fraction along the rank choices."""
    if kind == "quantize":
        return 8
    if isinstance(site.unchanged, int):
        return min((c for c in site.choices if isinstance(c, int)), key=lambda c: abs(c - level * site.unchanged))
    ranks = [c for c in site.choices if c != site.unchanged]
    return ranks[min(len(ranks) - 1, int(level * (len(ranks) - 1) + 0.5))] if ranks else site.unchanged


def downstream_names(space, assignment: dict[str, Any]) -> dict[str, Any]:
    """``assignment`` with the quantize sites renamed after the lowrank choices in it: ``chain.space`` names
    quantize's sites on the model lowrank gives at its defaults (a factored layer ``X`` is ``X.0`` and ``X.1``), so
    a layer left dense is ``X`` there instead, and one factored where the default keeps it dense is split."""
    lowrank = {s.name: p for p, sp in zip(space.prefixes, space.spaces) if sp.kind == "lowrank" for s in sp.sites}
    quant = [p for p, sp in zip(space.prefixes, space.spaces) if sp.kind == "quantize"]
    if not lowrank or not quant:
        return assignment
    out = {k: v for k, v in assignment.items() if not k.startswith(quant[0] + "/")}
    for key, value in assignment.items():
        if not key.startswith(quant[0] + "/"):
            continue
        name = key.split("/", 1)[1]
        base = name[:-2] if name[-2:] in (".0", ".1") else name
        if base in lowrank:
            dense = assignment[f"{lowrank[base]}/{base}"] == "dense"
            for n in [base] if dense else [f"{base}.0", f"{base}.1"]:
                out[f"{quant[0]}/{n}"] = value
        else:
            out[key] = value
    return out


def uniform_baselines(space, levels: list[float]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """family -> [(setting, assignment)]: each pass alone at each level (quantize: int8), then all at once."""
    base = unchanged(space)
    kinds = [sp.kind for sp in space.spaces]
    families: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    def setting(prefixes: list[str], level: float) -> dict[str, Any]:
        out = dict(base)
        for prefix, sp in zip(space.prefixes, space.spaces):
            if prefix in prefixes:
                previous = None
                for site in sp.sites:
                    choice = level_choice(site, sp.kind, level)
                    if sp.kind == "tokens" and previous is not None and choice > previous:
                        # a schedule keeps no more tokens than the block before it
                        choice = max((c for c in site.choices if c <= previous), default=min(site.choices))
                    out[f"{prefix}/{site.name}"] = previous = choice
        return downstream_names(space, out)

    for prefix, kind in zip(space.prefixes, kinds):
        grid = [1.0] if kind == "quantize" else levels
        label = "int8" if kind == "quantize" else kind
        families[f"uniform {label}"] = [
            (f"{label} {lv:g}" if kind != "quantize" else "int8", setting([prefix], lv)) for lv in grid
        ]
    if len(kinds) > 1:
        families["uniform " + "+".join("int8" if k == "quantize" else k for k in kinds)] = [
            (f"all at {lv:g}", setting(list(space.prefixes), lv)) for lv in levels
        ]
    return families


def _finetuned(setup, configs, steps: int, seed: int):
    from repfx_deploy.passes.registry import run_passes
    from repfx_deploy.search.recipe_out import finetune_configs

    return run_passes(setup.original, finetune_configs(configs, steps=steps, seed=seed), setup.context).module


def run_budget(bench, args, setup, request, dense_ms: float, fraction: float, test, work: Path) -> dict[str, Any]:
    """One budget: the search, the baselines, the same fine-tune, test accuracy and side-by-side latency."""
    from repfx_deploy.pipeline.evaluate import Deployable, evaluate
    from repfx_deploy.pipeline.search import run_search
    from repfx_deploy.recipe import load_recipe
    from repfx_deploy.search.config import Budget

    runtime = setup.runtime
    limit = dense_ms * fraction
    out_dir = work / f"{runtime}-{fraction:g}"
    config = dataclasses.replace(
        request.config,
        budgets=(Budget("latency_ms", limit),),
        sampler=args.sampler,
        trials=args.trials,
        top_k=args.top_k,
        finetune_steps=args.finetune_steps,
    )
    print(f"searching {runtime} under {limit:.3f} ms ({fraction:.0%}) into {out_dir}", flush=True)
    t0 = time.perf_counter()
    report = run_search(dataclasses.replace(request, out_dir=out_dir, config=config))
    search_s = time.perf_counter() - t0
    chosen = report.get("chosen")
    row: dict[str, Any] = {
        "runtime": runtime,
        "fraction": fraction,
        "budget_ms": limit,
        "dense_ms": dense_ms,
        "search_s": search_s,
        "time_s": report["time_s"],
        "predictor": report.get("predictor"),
        "trials": report["trials"],
        "front": report["front"],
        "status": report["status"],
        "compile_s": report["time_s"].get("compile_s", 0.0),
    }
    row["compile_share_pct"] = 100.0 * row["compile_s"] / search_s if search_s else None
    modules: dict[str, Any] = {}
    settings: dict[str, str] = {"dense (fine-tuned)": "-"}
    modules["dense (fine-tuned)"] = _finetuned(setup, (), args.finetune_steps, args.seed)
    ceiling = limit
    if chosen:
        ceiling = float(chosen["search_latency_ms"] or chosen["latency_ms"])
        passes = load_recipe(out_dir / "recipe.toml").passes  # the replay: what compress --recipe builds
        from repfx_deploy.passes.registry import run_passes

        modules["searched"] = run_passes(setup.original, passes, setup.context).module
        settings["searched"] = f"trial {chosen['number']}"
    print(f"baselines at or under {ceiling:.3f} ms", flush=True)
    row["baselines"] = []
    for family, grid in uniform_baselines(setup.chain.space, [float(v) for v in args.levels.split(",")]).items():
        best = None
        for setting, assignment in grid:
            run = setup.chain.apply(assignment)
            measured = setup.predictor.measure(run).latency_ms
            proxy = setup.scorer.score(assignment).accuracy
            row["baselines"].append({"family": family, "setting": setting, "latency_ms": measured, "proxy": proxy})
            print(f"  {family} {setting}: {measured:.3f} ms, proxy {100 * proxy:.2f} %", flush=True)
            if measured <= ceiling and (best is None or proxy > best[0]):
                best = (proxy, setting, run.configs)
        if best is not None:
            modules[family] = _finetuned(setup, best[2], args.finetune_steps, args.seed)
            settings[family] = best[1]
    specs = setup.loaded.input_specs
    timed = evaluate(
        {k: Deployable(m.eval(), input_specs=specs) for k, m in modules.items()},
        setup.profile,
        runtimes=[runtime],
        threads=setup.threads,
        verify=False,
    )
    row["models"] = {}
    for name, m in modules.items():
        lat = timed[name].latency[runtime].latency_ms
        row["models"][name] = {
            "setting": settings[name],
            "latency_ms": lat,
            "speedup": None,
            "test_accuracy": _test_accuracy(m, test),
        }
    dense_side = row["models"]["dense (fine-tuned)"]["latency_ms"]
    for m in row["models"].values():
        m["speedup"] = dense_side / m["latency_ms"]
    row["goals"] = goals(row, fraction)
    return row


def _test_accuracy(module, test) -> float | None:
    """Top-1 % on the test set; at batch 1 for a module captured at a static batch (a quantized one)."""
    from _assets import accuracy_percent

    try:
        return accuracy_percent(module, test)
    except Exception:  # a graph captured at batch 1 refuses others (as search/finetune.py scores it)
        return accuracy_percent(module, test, batch=1)


def goals(row: dict[str, Any], fraction: float) -> list[dict[str, Any]]:
    models = row["models"]
    out = []
    searched = models.get("searched")
    if searched is None:
        return [{"goal": "a searched model within budget", "figure": row["status"], "met": False}]
    base = [(k, v) for k, v in models.items() if k.startswith("uniform") and v["latency_ms"] <= searched["latency_ms"]]
    if base:
        k, v = max(base, key=lambda kv: kv[1]["test_accuracy"])
        d = searched["test_accuracy"] - v["test_accuracy"]
        out.append(
            {
                "goal": "searched >= best uniform baseline at <= its latency + 2 points",
                "figure": f"{d:+.2f} points vs {k}",
                "met": d >= 2.0,
            }
        )
    else:
        out.append(
            {
                "goal": "searched >= best uniform baseline + 2 points",
                "figure": "no baseline at or under the searched model's side-by-side latency",
                "met": False,
            }
        )
    if abs(fraction - 0.5) < 1e-9:
        d = models["dense (fine-tuned)"]["test_accuracy"] - searched["test_accuracy"]
        out.append(
            {
                "goal": "at 50 %: within 0.5 points of the dense model fine-tuned equally",
                "figure": f"{d:.2f} points under",
                "met": d <= 0.5,
            }
        )
    out.append(
        {
            "goal": "search + fine-tune <= 1 h",
            "figure": f"{row['search_s'] / 60:.1f} min",
            "met": row["search_s"] <= 3600,
        }
    )
    within = searched["latency_ms"] <= row["budget_ms"]
    out.append(
        {
            "goal": "searched within budget side by side",
            "figure": f"{searched['latency_ms']:.3f} ms vs {row['budget_ms']:.3f} ms",
            "met": within,
        }
    )
    pred = row.get("predictor") or {}
    mape, tau = pred.get("mape_pct"), pred.get("kendall_tau")
    out.append(
        {
            "goal": "predictor MAPE <= 5 %, Kendall tau >= 0.9",
            "figure": f"{_fmt(mape, '.1f')} %, {_fmt(tau, '.2f')} (n={pred.get('n')})",
            "met": mape is not None and tau is not None and mape <= 5.0 and tau >= 0.9,
        }
    )
    share = row["compile_share_pct"]
    out.append(
        {
            "goal": "compile <= 10 % of search time",
            "figure": f"{_fmt(share, '.1f')} %",
            "met": share is not None and share <= 10.0,
        }
    )
    return out


def compare_samplers(args, setup, request, limit: float, folder: Path) -> dict[str, Any]:
    """The trials alone, once per sampler, at equal trials, on the one scorer (cached by assignment, so a
    candidate two samplers both propose is scored once); hypervolume over each study's feasible trials."""
    from optuna.trial import TrialState

    from repfx_deploy.pipeline.search import uniform_seeds
    from repfx_deploy.search.config import Budget
    from repfx_deploy.search.front import is_feasible
    from repfx_deploy.search.objective import Objective, run_study
    from repfx_deploy.search.study import enqueue_seeds, open_study

    rows = []
    seeds = uniform_seeds(setup.chain.space)[: max(1, args.sampler_trials // 2)]
    for sampler in args.samplers.split(","):
        config = dataclasses.replace(
            request.config,
            budgets=(Budget("latency_ms", limit),),
            sampler=sampler,
            trials=args.sampler_trials,
            seed=args.seed,
        )
        out = folder / sampler
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        study = open_study(config, out)
        enqueue_seeds(study, setup.chain.space, seeds)
        run_study(study, Objective(setup.scorer, setup.chain.space, config), config, progress=False)
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        feasible = [t for t in done if is_feasible(t)]
        points = [(float(t.values[0]), float(t.values[1])) for t in feasible]
        rows.append(
            {
                "sampler": sampler,
                "hypervolume": hypervolume(points, limit),
                "feasible": len(feasible),
                "complete": len(done),
                "best_accuracy": 100 * max((p[0] for p in points), default=float("nan")),
                "time_s": time.perf_counter() - t0,
            }
        )
        print(f"  {sampler}: hypervolume {rows[-1]['hypervolume']:.4f}", flush=True)
    best = max(rows, key=lambda r: r["hypervolume"])["sampler"]
    return {
        "runtime": setup.runtime,
        "budget_ms": limit,
        "trials": args.sampler_trials,
        "seeds": len(seeds),
        "rows": rows,
        "best": best,
    }
