"""The search's report: ``report.md`` (the Pareto front as a table and as a plot, where the time went, the
predictor's error, the fine-tuned results), ``report.json`` (strict JSON), ``front.json`` and ``front.png``.

    record = trial_record(trial, budgets)            # one trial, JSON-ready
    write_search_report(folder, report, points=[...], recipe_toml=text)

The report document is built by ``pipeline/search.py``; its keys are listed in ``render_search_markdown``. Each
file is written atomically (``atomic_file``), so a search stopped while writing leaves the previous report, not
half of a new one. The plot is drawn with matplotlib's Agg canvas directly (no pyplot), so it needs no display
and leaves the process's matplotlib backend alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.report import strict_json
from repfx_deploy.search.front import MEASURED_LATENCY, MEASURED_SOURCE, judged_feasible, violations

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from repfx_deploy.search.front import BudgetLike

PLOT_NAME = "front.png"
# The time split's rows, in the order the work happens, and how each reads.
TIME_ROWS = (
    ("proxy_eval_s", "accuracy proxy (apply, BN re-calibration, held-out evaluation)"),
    ("latency_predict_s", "latency prediction (lookup tables, estimator)"),
    ("compile_s", "compiling (export, TVM build)"),
    ("measure_s", "measuring whole models"),
    ("finetune_s", "fine-tuning the top candidates"),
    ("result_s", "building, verifying and measuring the result (best/, compile time counted above)"),
    ("other_s", "everything else (loading, preparing the passes, Optuna, writing)"),
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def trial_record(trial: FrozenTrial, budgets: Sequence[BudgetLike] = ()) -> dict[str, Any]:
    """One completed trial as the report lists it: its assignment, the proxy accuracy, the predicted latency and
    its source, the whole-model measurement where there is one, the size, and the budgets as judged now."""
    attrs = trial.user_attrs
    values = list(trial.values or (None, None))
    return {
        "number": trial.number,
        "assignment": dict(trial.params),
        "accuracy": values[0],
        "latency_ms": values[1],
        "latency_source": attrs.get("latency_source"),
        "measured_latency_ms": attrs.get(MEASURED_LATENCY),
        "measured_source": attrs.get(MEASURED_SOURCE),
        "size_bytes": attrs.get("size_bytes"),
        "feasible": judged_feasible(trial, budgets),
        "violations": violations(trial, budgets) if budgets else dict(trial.constraints),
    }


def _fmt(value: Any, spec: str, none: str = "") -> str:
    number = _number(value)
    return none if number is None else format(number, spec)


def _pct(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{100 * number:.2f} %"


def _front_table(front: Sequence[Mapping[str, Any]], chosen: int | None) -> list[str]:
    lines = [
        "| trial | proxy accuracy | predicted ms (source) | measured ms (source) | size (bytes) | within budget |",
        "|---|---|---|---|---|---|",
    ]
    for r in front:
        mark = " (chosen)" if r["number"] == chosen else ""
        predicted = f"{_fmt(r['latency_ms'], '.4f')} ({r.get('latency_source') or '?'})"
        measured = (
            f"{_fmt(r['measured_latency_ms'], '.4f')} ({r.get('measured_source') or '?'})"
            if r.get("measured_latency_ms") is not None
            else "not measured"
        )
        size = f"{int(r['size_bytes']):,}" if _number(r.get("size_bytes")) is not None else "n/a"
        lines.append(
            f"| {r['number']}{mark} | {_pct(r['accuracy'])} | {predicted} | {measured} | {size} | "
            f"{'yes' if r['feasible'] else 'no'} |"
        )
    return lines


def _finetuned_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| trial | proxy accuracy | accuracy after fine-tune (held-out) | eval accuracy | latency ms (source) "
        "| within budget | built and verified |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            status = f"no: {r['error']}"
        elif r.get("chosen"):
            status = "yes, in best/" if r.get("verified") else "built in best/, but see the warnings"
        else:
            status = "not built (another was shipped)"
        lines.append(
            f"| {r['number']}{' (chosen)' if r.get('chosen') else ''} | {_pct(r.get('proxy_accuracy'))} | "
            f"{_pct(r.get('accuracy'))} | {_pct(r.get('eval_accuracy'))} | "
            f"{_fmt(r.get('latency_ms'), '.4f', 'n/a')} ({r.get('latency_source') or '?'}) | "
            f"{'yes' if r.get('feasible') else 'no'} | {status} |"
        )
    return lines


def _time_table(time_s: Mapping[str, Any]) -> list[str]:
    total = _number(time_s.get("total_s")) or 0.0
    lines = ["| step | time (s) | share |", "|---|---|---|"]
    for key, words in TIME_ROWS:
        seconds = _number(time_s.get(key))
        if seconds is None:
            continue
        share = f"{100 * seconds / total:.1f} %" if total > 0 else "n/a"
        lines.append(f"| {words} | {seconds:.2f} | {share} |")
    lines.append(f"| total | {total:.2f} | |")
    return lines


def _predictor_lines(predictor: Mapping[str, Any] | None) -> list[str]:
    if not predictor or not predictor.get("n"):
        return ["No candidate was measured whole, so the predictor's error is not known.", ""]
    tau = _number(predictor.get("kendall_tau"))
    return [
        f"Against {predictor['n']} whole-model measurement(s), after recalibration: MAPE "
        f"{_fmt(predictor.get('mape_pct'), '.2f', 'n/a')} %, Kendall tau {'n/a' if tau is None else f'{tau:.3f}'}.",
        "",
    ]


def render_search_markdown(report: Mapping[str, Any]) -> str:
    """The search report as Markdown. Keys used: ``status``, ``model.path``, ``target``, ``runtime``,
    ``budgets`` (``[{metric, limit}]``), ``trials`` (``complete``, ``failed``, ``target``, ``failures``),
    ``front`` (``trial_record`` rows), ``finetuned``, ``chosen``, ``predictor``, ``time_s``, ``notes``,
    ``warnings``."""
    chosen = report.get("chosen") or {}
    trials = report.get("trials") or {}
    budgets = ", ".join(f"{b['metric']} <= {b['limit']:g}" for b in report.get("budgets") or []) or "none"
    lines = [
        f"# repfx-deploy search: {(report.get('model') or {}).get('path', '?')}",
        "",
        f"Status: **{report.get('status', '?')}**. Target: `{report.get('target')}`, runtime "
        f"{report.get('runtime')}. Budgets: {budgets}.",
        f"Trials: {trials.get('complete', 0)} complete, {trials.get('failed', 0)} failed, of "
        f"{trials.get('target', '?')} asked for (sampler {report.get('sampler')}, seed {report.get('seed')}).",
        "",
        "## Result",
        "",
    ]
    if chosen:
        lines += [
            f"Trial {chosen['number']}, fine-tuned: top-1 accuracy {_pct(chosen.get('eval_accuracy'))} on the "
            f"evaluation data ({_pct(chosen.get('accuracy'))} held-out), latency "
            f"{_fmt(chosen.get('latency_ms'), '.4f', 'n/a')} ms ({chosen.get('latency_source') or '?'}). "
            "Its artifacts are in `best/`; `recipe.toml` rebuilds it with "
            "`repfx-deploy compress MODEL --recipe recipe.toml`.",
            "",
        ]
    else:
        lines += ["No candidate was within the budgets, so there is no chosen model.", ""]
    lines += ["## Pareto front", ""]
    front = report.get("front") or []
    if front:
        lines += _front_table(front, chosen.get("number"))
        lines += ["", f"![Pareto front]({PLOT_NAME})", ""]
    else:
        lines += ["No completed trial was within the budgets.", ""]
    if report.get("finetuned"):
        lines += ["## Fine-tuned candidates", ""] + list(_finetuned_table(report["finetuned"])) + [""]
    lines += ["## Where the time went", ""] + _time_table(report.get("time_s") or {}) + [""]
    lines += ["## Latency predictor", ""] + _predictor_lines(report.get("predictor"))
    failures = trials.get("failures") or []
    if failures:
        lines += ["## Failed candidates", ""]
        lines += [f"- trial {f['number']}: {f.get('reason') or 'no reason recorded'}" for f in failures] + [""]
    for title, key in (("Warnings", "warnings"), ("Notes", "notes")):
        if report.get(key):
            lines += [f"## {title}", ""] + [f"- {x}" for x in report[key]] + [""]
    return "\n".join(lines)


def plot_front(
    path: Path,
    points: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    *,
    budgets: Sequence[Mapping[str, Any]] = (),
    chosen: Mapping[str, Any] | None = None,
) -> None:
    """Draw accuracy against latency to the PNG ``path``: every completed trial (``points``, predicted
    latency), the front as a step line, each whole measurement joined to its prediction, the latency budget,
    the chosen model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    def xy(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
        kept = [r for r in rows if _number(r.get(key)) is not None and _number(r.get("accuracy")) is not None]
        return [float(r[key]) for r in kept], [100 * float(r["accuracy"]) for r in kept]

    xs, ys = xy(points, "latency_ms")
    ax.scatter(xs, ys, s=14, color="0.7", label="trials (predicted latency)")
    # the front is judged on measured latencies where there are: drawn at those
    shown = [
        {**r, "at_ms": r["measured_latency_ms"] if r.get("measured_latency_ms") is not None else r.get("latency_ms")}
        for r in front
    ]
    fx, fy = xy(shown, "at_ms")
    if fx:
        ax.step(fx, fy, where="post", color="C0", marker="o", label="Pareto front")
    measured = [r for r in points if _number(r.get("measured_latency_ms")) is not None]
    if measured:
        mx, my = xy(measured, "measured_latency_ms")
        ax.scatter(mx, my, s=30, marker="s", color="C1", label="measured whole (joined to its prediction)")
        for r in measured:
            if _number(r.get("latency_ms")) is not None:
                y = 100 * float(r["accuracy"])
                ax.plot([float(r["latency_ms"]), float(r["measured_latency_ms"])], [y, y], color="C1", lw=0.8)
    every_ms = xs + [float(r["measured_latency_ms"]) for r in measured]
    for b in budgets:
        if b.get("metric") != "latency_ms":
            continue
        limit = float(b["limit"])
        if not every_ms or limit <= 2 * max(every_ms):
            ax.axvline(limit, color="C3", ls="--", label=f"budget {limit:g} ms")
        else:  # far right of every candidate: a line there would squash them all to the left edge
            ax.set_title(f"latency budget {limit:g} ms (beyond every candidate)", fontsize=9)
    if chosen and _number(chosen.get("latency_ms")) is not None and _number(chosen.get("accuracy")) is not None:
        ax.scatter(
            [float(chosen["latency_ms"])],
            [100 * float(chosen["accuracy"])],
            s=120,
            marker="*",
            color="C2",
            zorder=5,
            label="chosen (fine-tuned, measured)",
        )
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("top-1 accuracy (%, held-out)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_search_report(
    folder: Path,
    report: Mapping[str, Any],
    *,
    points: Sequence[Mapping[str, Any]],
    recipe_toml: str | None,
) -> dict[str, str]:
    """Write ``front.png``, ``front.json``, ``report.json``, ``report.md`` and (when given) ``recipe.toml`` into
    ``folder``, each atomically and replacing an earlier run's; returns their names, relative to ``folder``."""
    from repfx_deploy.atomic import atomic_file

    folder = Path(folder)
    written: dict[str, str] = {}
    with atomic_file(folder / PLOT_NAME) as tmp:
        plot_front(
            tmp, points, report.get("front") or [], budgets=report.get("budgets") or (), chosen=report.get("chosen")
        )
    written["plot"] = PLOT_NAME
    texts = {
        "front_json": ("front.json", strict_json.dumps({"front": report.get("front") or [], "trials": points}) + "\n"),
        "report_json": ("report.json", strict_json.dumps(report) + "\n"),
        "report_md": ("report.md", render_search_markdown(report)),
    }
    if recipe_toml is not None:
        texts["recipe"] = ("recipe.toml", recipe_toml)
    for key, (name, text) in texts.items():
        with atomic_file(folder / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written[key] = name
    return written
