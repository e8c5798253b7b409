"""Render a compress report as Markdown a person can read in a code review."""

from __future__ import annotations

from repfx_deploy.report.phrasing import faster, fewer

_RUNTIMES = ("onnxruntime", "tvm", "torch")


def _fmt(value, spec: str = "", none: str = "n/a") -> str:
    if value is None:
        return none
    return format(value, spec) if spec else str(value)


def _passes_table(passes: list[dict]) -> list[str]:
    """One row per pass: what it was set to, what it did to parameters and MACs, and how long it took."""
    lines = [
        "## Passes",
        "",
        "| # | pass | settings | sites set | parameters | MACs | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(passes):
        set_by_user = p.get("settings", p.get("config")) or {}
        settings = ", ".join(f"{k} = {_short(v)}" for k, v in set_by_user.items()) or "defaults"
        decisions = p.get("decisions") or {}
        lines.append(
            f"| {i + 1} | `{p['kind']}` | {settings} | {len(decisions)} | "
            f"{p['params_before']:,} -> {p['params_after']:,} ({fewer(p['params_before'], p['params_after'])}) | "
            f"{p['macs_before']:,} -> {p['macs_after']:,} ({fewer(p['macs_before'], p['macs_after'])}) | {p.get('time_s', 0):.2f} |"
        )
    lines += [
        "",
        "Each pass's choice per site and its own figures are under `passes[i].decisions` and `passes[i].extras` "
        "in report.json.",
        "",
    ]
    return lines


def _short(value, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _source_label(entry: dict) -> str:
    """How a latency figure was obtained, as a table row says it."""
    source = entry.get("source", "measured-local")
    if source == "estimated":
        return f"estimated, ±{entry['error_pct']:.3g} %"
    label = "median, measured on device over RPC" if source == "measured-rpc" else "median, measured on this machine"
    return label + (", emulated: not the device's speed" if entry.get("emulated") else "")


def _latency_rows(base: dict, comp: dict) -> list[str]:
    """The before/after table's latency rows: one per runtime, saying where the figures came from."""
    rows = []
    runtimes = [rt for rt in _RUNTIMES if rt in base["latency_ms"] or rt in comp["latency_ms"]]
    runtimes += [rt for rt in {**base["latency_ms"], **comp["latency_ms"]} if rt not in runtimes]
    for rt in runtimes:
        b_entry, c_entry = base["latency"].get(rt, {}), comp["latency"].get(rt, {})
        label = _source_label(c_entry or b_entry)
        if b_entry and c_entry and _source_label(b_entry) != label:
            label += f"; baseline {_source_label(b_entry)}"
        b, c = base["latency_ms"].get(rt), comp["latency_ms"].get(rt)
        rows.append(f"| latency {rt} (ms, {label}) | {_fmt(b, '.4f')} | {_fmt(c, '.4f')} | {faster(b, c)} |")
    return rows


def _latency_section(base: dict, comp: dict) -> list[str]:
    """Every latency figure with its statistics (measured) or its method and error (estimated), then where each
    kind of figure came from."""
    lines = [
        "## Latency",
        "",
        "| model | runtime | source | median ms | p90 ms | min ms | repeats | threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sources: dict[str, dict] = {}
    for label, summary in (("baseline", base), ("compressed", comp)):
        for rt, r in summary["latency"].items():
            sources.setdefault(r.get("source", "measured-local"), r)
            st = r.get("stats")
            if st:
                threads = (r.get("environment") or {}).get("threads", "")
                lines.append(
                    f"| {label} | {rt} | {_source_label(r)} | {st['median_ms']:.4f} | {st['p90_ms']:.4f} | "
                    f"{st['min_ms']:.4f} | {st['repeats']} | {threads} |"
                )
            else:
                lines.append(
                    f"| {label} | {rt} | {_source_label(r)} ({r.get('method', 'estimator')}) | {r['latency_ms']:.4f} "
                    f"| | | | {r.get('threads', '')} |"
                )
    lines.append("")
    if "measured-local" in sources:
        env = sources["measured-local"].get("environment") or {}
        v = env.get("versions", {})
        lines.append(
            f"Measured on this machine: {env.get('cpu')} ({env.get('machine')}), torch {v.get('torch')}, "
            f"onnxruntime {v.get('onnxruntime')}, TVM {v.get('apache-tvm')}."
        )
    if "measured-rpc" in sources:
        r = sources["measured-rpc"]
        device, env = r.get("device") or {}, r.get("environment") or {}
        lines.append(
            f"Measured on device `{device.get('key')}` at {device.get('address')} over TVM RPC "
            f"({env.get('machine')}, TVM {(env.get('versions') or {}).get('apache-tvm')}), with the device's own timer."
            + (f" {r['note']}" if r.get("note") else "")
        )
    if "estimated" in sources:
        r = sources["estimated"]
        lines.append(
            f"Estimated, not measured: the target's {r.get('method')}, which predicts {r.get('predicts')}; "
            f"calibrated on {r.get('calibrated_on')}. Stated error: ±{r['error_pct']:.3g} % ({r.get('accuracy')})."
        )
    return lines + [""]


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def render_markdown(report: dict) -> str:
    lines = [f"# repfx-deploy report: {report['model']['path']}", ""]
    lines.append(
        f"Status: **{report['status']}**. Target: `{report['target']['name']}` "
        f"({report['target']['description']}), {report['threads']} thread(s)."
    )
    lines.append("")
    if report.get("error"):
        lines += ["## Error", "", report["error"], ""]
    base, comp = report.get("baseline"), report.get("compressed")
    if base and comp:
        lines += ["## Before and after", "", "| | baseline | compressed | change |", "|---|---|---|---|"]
        lines.append(
            f"| parameters | {base['params']:,} | {comp['params']:,} | {fewer(base['params'], comp['params'])} |"
        )
        lines.append(f"| MACs | {base['macs']:,} | {comp['macs']:,} | {fewer(base['macs'], comp['macs'])} |")
        lines.append(
            f"| ONNX size (bytes) | {base['size_bytes']:,} | {comp['size_bytes']:,} | {fewer(base['size_bytes'], comp['size_bytes'], less='smaller', more='larger')} |"
        )
        lines.append(f"| top-1 accuracy | {_pct(base['accuracy'])} | {_pct(comp['accuracy'])} | |")
        lines.append(f"| top-1 agreement with original | {_pct(base['agreement'])} | {_pct(comp['agreement'])} | |")
        fid = comp.get("fidelity") or {}
        if fid:
            lines.append(f"| output cosine with original | 1.00000000 | {fid['cosine']:.8f} | |")
        lines += _latency_rows(base, comp)
        if fid:
            lines += [
                "",
                f"Accuracy and agreement are of the deployed ONNX model (ONNX Runtime); agreement and cosine "
                f"were measured on {fid['data']}, {fid['samples']} batch(es).",
            ]
        lines.append("")
        lines += _latency_section(base, comp)
    if report.get("passes"):
        lines += _passes_table(report["passes"])
    if report.get("verification"):
        lines += [
            "## Verification (same inputs, outputs compared)",
            "",
            "| reference | candidate | max abs error | cosine | samples |",
            "|---|---|---|---|---|",
        ]
        for v in report["verification"]:
            lines.append(
                f"| {v['reference']} | {v['candidate']} | {v['max_abs_error']:.3g} | {v['cosine']:.8f} | {v['samples']} |"
            )
        lines.append("")
    if report.get("compile"):
        c = report["compile"]
        manifest = c.get("manifest", {})
        lines += ["## TVM build", "", f"- library: `{c.get('library_path')}`"]
        for key in ("tune_trials", "kernels_tuned", "kernels_untuned", "compile_s"):
            if key in manifest:
                lines.append(f"- {key}: {manifest[key]}")
        lines.append("")
    if report.get("artifacts"):
        lines += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in report["artifacts"].items() if v] + [""]
    for title, key in (("Warnings", "warnings"), ("Notes", "notes")):
        if report.get(key):
            lines += [f"## {title}", ""] + [f"- {x}" for x in report[key]] + [""]
    return "\n".join(lines)
