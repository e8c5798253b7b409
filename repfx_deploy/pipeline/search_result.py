"""The end of a search: the front measured whole, the top K fine-tuned, the chosen one shipped, the report.

``finish_search`` runs after the trials; ``write_partial_report`` is what an interrupted search leaves. The
chosen model is built by ``compress`` itself from the reproducing recipe, into ``best/``: the folder is exactly
what ``compress --recipe recipe.toml`` gives, exported, compiled, verified and measured the same way, and its
outputs are checked against the model the search fine-tuned (``replay`` in the report).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from repfx_deploy.errors import RepfxError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from repfx_deploy.pipeline.search import SearchRequest, SearchSetup
    from repfx_deploy.search.finetune import Finetuned

log = logging.getLogger("repfx_deploy.pipeline")

BEST = "best"
# compress's own torch-vs-ONNX Runtime error times this bounds how far the replayed model may be from the
# fine-tuned one before the report says they differ (float kernels sum in different orders)
REPLAY_SLACK = 10.0
REPLAY_MIN_ERROR = 1e-4
REPLAY_BATCHES = 4


def finish_search(
    request: SearchRequest, setup: SearchSetup, study: optuna.Study, started: float, *, stopped_by: str
) -> dict[str, Any]:
    """Measure the front, fine-tune the top K, ship the most accurate within budget, write the report."""
    from repfx_deploy.search.finetune import finetune_top
    from repfx_deploy.search.front import is_measured, pareto_front
    from repfx_deploy.search.measure import measure_front

    config = request.config
    outcome = measure_front(study, setup.chain, setup.predictor, near=config.measure_near_front, budgets=config.budgets)
    front = pareto_front(outcome.trials, measured=True, budgets=config.budgets)
    # the fine-tune takes measured candidates only: the budget is never judged on an estimate alone
    measured_front = pareto_front([t for t in outcome.trials if is_measured(t)], measured=True, budgets=config.budgets)
    tuned = finetune_top(
        measured_front,
        config.top_k,
        chain=setup.chain,
        original=setup.original,
        context=setup.context,
        holdout=setup.proxy.holdout,
        steps=config.finetune_steps,
        seed=config.seed,
        threads=setup.threads,
    )
    chosen, best, result_s = _ship(request, setup, tuned)
    report = _document(request, setup, outcome.trials, front, started, stopped_by=stopped_by)
    report["predictor"] = {**outcome.error, "tier": setup.predictor.tier, "measured_now": outcome.new}
    report["finetuned"] = [_finetuned_row(t, chosen, config.budgets) for t in tuned]
    report["chosen"] = _chosen(chosen, best, setup.runtime, config.budgets, report) if chosen else None
    for row in report["finetuned"]:
        if row["chosen"] and report["chosen"]:
            # only the shipped one is exported, compiled and verified (by compress, into best/)
            row["eval_accuracy"] = report["chosen"]["eval_accuracy"]
            row["latency_ms"] = report["chosen"]["latency_ms"]
            row["latency_source"] = report["chosen"]["latency_source"]
            row["verified"] = (
                bool((report["chosen"]["replay"] or {}).get("same_model"))
                and not report["chosen"]["verification_warnings"]
            )
    if chosen is None:
        report["status"] = "no candidate within budget" if not front else "no candidate could be shipped"
    times = report["time_s"]
    times["finetune_s"] = round(sum(t.time_s for t in tuned), 3)
    times["result_s"] = round(result_s, 3)
    compile_best = ((best or {}).get("compile") or {}).get("manifest", {}).get("compile_s") or 0.0
    times["compile_s"] = round(times["compile_s"] + float(compile_best), 3)
    times["result_s"] = round(max(0.0, result_s - float(compile_best)), 3)
    _close_times(times, started)
    recipe_toml = None
    if chosen is not None:
        from repfx_deploy.search.recipe_out import reproducing_toml

        recipe_toml = reproducing_toml(setup.recipe, chosen.configs)
    _write(request.out_dir, report, outcome.trials, recipe_toml)
    return report


def write_partial_report(request: SearchRequest, setup: SearchSetup, study: optuna.Study, started: float) -> None:
    """The report of what an interrupted search found: the front so far (measured where it was), no result."""
    from repfx_deploy.search.front import measurements, pareto_front, with_measurements

    try:
        trials = with_measurements(study.get_trials(deepcopy=False), measurements(study.user_attrs))
        front = pareto_front(trials, measured=True, budgets=request.config.budgets)
        report = _document(request, setup, trials, front, started, stopped_by="interrupted")
        report["status"] = "stopped"
        report["chosen"] = None
        report["notes"].append("The search was interrupted: run the same command again to resume it.")
        _close_times(report["time_s"], started)
        _write(request.out_dir, report, trials, None)
    except (RepfxError, OSError) as e:  # the interrupt is what the user must see; the study is kept anyway
        log.warning("the report of the interrupted search could not be written: %s", e)


def _write(out_dir: Path, report: dict[str, Any], trials: Sequence[FrozenTrial], recipe_toml: str | None) -> None:
    from repfx_deploy.search.config import Budget
    from repfx_deploy.search.front import completed
    from repfx_deploy.search.report import trial_record, write_search_report

    budgets = [Budget(b["metric"], float(b["limit"])) for b in report["budgets"]]
    points = [trial_record(t, budgets) for t in completed(trials)]
    report["artifacts"] = write_search_report(out_dir, report, points=points, recipe_toml=recipe_toml)
    if report.get("chosen"):
        report["artifacts"]["best"] = BEST


def _ship(
    request: SearchRequest, setup: SearchSetup, tuned: Sequence[Finetuned]
) -> tuple[Finetuned | None, dict[str, Any] | None, float]:
    """Build the most accurate fine-tuned candidate into ``best/`` with ``compress``; the next one when that
    fails. Returns the one shipped, compress's report of it, and the time taken."""
    from repfx_deploy.pipeline.compress import CompressRequest, compress
    from repfx_deploy.search.finetune import ranked
    from repfx_deploy.search.recipe_out import reproducing_recipe

    started = time.perf_counter()
    for item in ranked(tuned):
        log.info("building the result from trial %d into %s/", item.number, BEST)
        try:
            best = compress(
                CompressRequest(
                    model_path=request.model_path,
                    out_dir=request.out_dir / BEST,
                    recipe=reproducing_recipe(setup.recipe, item.configs),
                    load=request.load,
                    target_file=request.target_file,
                    force=True,
                    timing=request.timing,
                    compile_tvm=setup.runtime == "tvm",
                    rpc=request.rpc,
                    rpc_key=request.rpc_key,
                )
            )
        except RepfxError as e:
            log.warning("trial %d could not be shipped: %s", item.number, e)
            item.error = f"{type(e).__name__}: {e.problem}"
            continue
        best["replay"] = _replay_check(request.out_dir / BEST, item, setup, best)
        return item, best, time.perf_counter() - started
    return None, None, time.perf_counter() - started


def _replay_check(folder: Path, item: Finetuned, setup: SearchSetup, best: dict[str, Any]) -> dict[str, Any]:
    """How far ``best/model.onnx`` (rebuilt by compress from the recipe) is from the model fine-tuned here."""
    from repfx_deploy.measure.runner import run_all
    from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner
    from repfx_deploy.verify import compare

    assert item.module is not None
    batch = int(setup.loaded.input_specs[0].shape[0])
    samples = [[b] for b in setup.proxy.holdout.batches(batch)[:REPLAY_BATCHES]]
    ours = run_all(TorchRunner(item.module, setup.threads), samples)
    theirs = run_all(OrtRunner(folder / "model.onnx", setup.threads), samples)
    agreement = compare(ours, theirs, reference_name="fine-tuned here (torch)", candidate_name="best/ (onnxruntime)")
    own = [v["max_abs_error"] for v in best.get("verification", []) if v.get("candidate") == "onnxruntime"]
    bound = max(REPLAY_MIN_ERROR, REPLAY_SLACK * max(own, default=0.0))
    return {**agreement.to_dict(), "bound": bound, "same_model": bool(agreement.max_abs_error <= bound)}


def _finetuned_row(item: Finetuned, chosen: Finetuned | None, budgets: Sequence[Any]) -> dict[str, Any]:
    row = item.to_dict()
    latency_budget = next((b for b in budgets if b.metric == "latency_ms"), None)
    row["feasible"] = item.latency_ms is not None and (
        latency_budget is None or latency_budget.violation(item.latency_ms) <= 0
    )
    row["chosen"] = chosen is item
    return row


def _chosen(
    item: Finetuned, best: dict[str, Any] | None, runtime: str, budgets: Sequence[Any], report: dict[str, Any]
) -> dict[str, Any]:
    """The shipped model as the report states it: the figures of ``best/`` (compress's measurement), and a
    warning when that final measurement lands over a budget the search's measurement was within."""
    compressed = (best or {}).get("compressed") or {}
    latency = (compressed.get("latency") or {}).get(runtime) or {}
    out: dict[str, Any] = {
        "number": item.number,
        "assignment": item.assignment,
        "proxy_accuracy": item.proxy_accuracy,
        "accuracy": item.accuracy,
        "eval_accuracy": compressed.get("accuracy"),
        "latency_ms": latency.get("latency_ms", item.latency_ms),
        "latency_source": latency.get("source", item.latency_source),
        "search_latency_ms": item.latency_ms,
        "weights_bytes": compressed.get("weights_bytes"),
        "onnx_size_bytes": compressed.get("size_bytes"),
        "folder": BEST,
        "replay": (best or {}).get("replay"),
        "verification": (best or {}).get("verification") or [],
        "verification_warnings": [w for w in (best or {}).get("warnings") or [] if " differs from " in w],
    }
    for b in budgets:
        value = out["latency_ms"] if b.metric == "latency_ms" else None
        if value is not None and b.violation(value) > 0:
            report["warnings"].append(
                f"best/ measured {value:.4g} ms on {runtime}, over the {b.limit:g} ms budget, where the search "
                f"measured {item.latency_ms:.4g} ms: timing noise near the limit; measure it again with bench."
            )
    if out["replay"] is not None and not out["replay"]["same_model"]:
        report["warnings"].append(
            f"best/model.onnx differs from the model the search fine-tuned by up to "
            f"{out['replay']['max_abs_error']:.3g}: the recipe did not replay exactly."
        )
    return out


def _document(
    request: SearchRequest,
    setup: SearchSetup,
    trials: Sequence[FrozenTrial],
    front: Sequence[FrozenTrial],
    started: float,
    *,
    stopped_by: str,
) -> dict[str, Any]:
    """The report's keys every search has, finished or not."""
    from optuna.trial import TrialState

    from repfx_deploy.search.report import trial_record
    from repfx_deploy.search.study import FAILURE

    config, loaded = request.config, setup.loaded
    failures = [
        {"number": t.number, "reason": t.user_attrs[FAILURE]}
        for t in trials
        if t.state == TrialState.FAIL and FAILURE in t.user_attrs
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    fresh = [t for t in complete if "cached_from" not in t.user_attrs]
    # the time split is of this run's wall time, so it sums the trials this run started (a resumed study also
    # holds the earlier runs'); Optuna stamps trials with naive local time
    since = datetime.now() - timedelta(seconds=time.perf_counter() - started)
    details = [t.user_attrs.get("details") or {} for t in fresh if t.datetime_start and t.datetime_start >= since]
    predictor_time = getattr(setup.predictor, "time_s", {})
    notes = list(setup.notes)
    if setup.proxy.pool == "train":
        notes.append(
            "The fine-tune trains on [data] train, which holds the held-out split the accuracies after it are "
            "measured on; compare the fine-tuned candidates by their evaluation accuracy in best/ and the report."
        )
    return {
        "status": "ok",
        "stopped_by": stopped_by,
        "model": {"path": str(loaded.path), "format": loaded.format, "sha256": loaded.sha256, "arch": loaded.arch},
        "target": setup.profile.name,
        "runtime": setup.runtime,
        "threads": setup.threads,
        "budgets": [{"metric": b.metric, "limit": b.limit} for b in config.budgets],
        "sampler": config.sampler,
        "strategy": config.strategy,
        "seed": config.seed,
        "config": {**config.to_dict(), "storage": _redacted(config.storage) if config.storage else "study.db"},
        "space": {
            "size": setup.chain.space.size,
            "sites": len(setup.chain.space.keys()),
            "passes": list(setup.chain.space.prefixes),
        },
        "proxy": setup.proxy.to_dict(),
        "trials": {
            "target": config.trials,
            "complete": len(complete),
            "scored": len(fresh),
            "failed": len(failures),
            "failures": failures,
        },
        "front": [trial_record(t, config.budgets) for t in front],
        "time_s": {
            "proxy_eval_s": round(sum(float(d.get("proxy_s") or 0.0) for d in details), 3),
            "latency_predict_s": round(sum(float(d.get("predict_s") or 0.0) for d in details), 3),
            "compile_s": round(float(predictor_time.get("compile", 0.0)), 3),
            "measure_s": round(float(predictor_time.get("measure", 0.0)), 3),
        },
        "notes": notes,
        "warnings": [],
    }


def _close_times(times: dict[str, Any], started: float) -> None:
    """``total_s`` (wall time of this run) and ``other_s``, what the named steps leave of it. With several
    workers the steps sum over processes and may exceed the wall time."""
    total = time.perf_counter() - started
    named = sum(float(v) for k, v in times.items() if k.endswith("_s") and k not in ("total_s", "other_s"))
    times["total_s"] = round(total, 3)
    times["other_s"] = round(max(0.0, total - named), 3)


def _redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
