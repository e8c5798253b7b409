"""The search report: the front as a table and a valid PNG, the time split, the predictor's error, strict JSON."""

import json
import struct

from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from repfx_deploy.search.config import Budget
from repfx_deploy.search.front import MEASURED_LATENCY, MEASURED_SOURCE
from repfx_deploy.search.report import render_search_markdown, trial_record, write_search_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(number, accuracy, latency, measured=None, **extra):
    row = {
        "number": number,
        "assignment": {"prune/conv": number},
        "accuracy": accuracy,
        "latency_ms": latency,
        "latency_source": "lut-ort",
        "measured_latency_ms": measured,
        "measured_source": "measured-local" if measured is not None else None,
        "size_bytes": 1000 + number,
        "feasible": True,
        "violations": {},
    }
    return {**row, **extra}


def _report(**over):
    front = [_record(1, 0.8, 2.0, measured=2.1), _record(0, 0.9, 3.5, measured=3.4)]
    report = {
        "status": "ok",
        "model": {"path": "model.pt"},
        "target": "host",
        "runtime": "onnxruntime",
        "sampler": "tpe",
        "seed": 0,
        "budgets": [{"metric": "latency_ms", "limit": 4.0}],
        "trials": {"complete": 5, "failed": 1, "target": 6, "failures": [{"number": 5, "reason": "PassError: boom"}]},
        "front": front,
        "finetuned": [
            {
                "number": 0,
                "proxy_accuracy": 0.9,
                "accuracy": 0.92,
                "eval_accuracy": 0.91,
                "latency_ms": 3.3,
                "latency_source": "measured-local",
                "feasible": True,
                "verified": True,
                "chosen": True,
            },
        ],
        "chosen": {
            "number": 0,
            "accuracy": 0.92,
            "eval_accuracy": 0.91,
            "latency_ms": 3.3,
            "latency_source": "measured-local",
        },
        "predictor": {"mape_pct": 3.2, "kendall_tau": 0.95, "n": 2},
        "time_s": {
            "proxy_eval_s": 5.0,
            "latency_predict_s": 1.0,
            "compile_s": 2.0,
            "measure_s": 1.5,
            "finetune_s": 3.0,
            "other_s": 0.5,
            "total_s": 13.0,
        },
        "notes": ["a note"],
        "warnings": [],
    }
    return {**report, **over}


def _points():
    return [*_report()["front"], _record(2, 0.5, 3.0), _record(3, 0.7, 5.0), _record(4, 0.95, 6.0)]


def _strict(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_markdown_has_the_front_table_the_plot_the_time_split_and_the_predictor_error():
    md = render_search_markdown(_report())
    assert "| trial | proxy accuracy | predicted ms (source) | measured ms (source)" in md
    assert "| 0 (chosen) | 90.00 % | 3.5000 (lut-ort) | 3.4000 (measured-local)" in md
    assert "![Pareto front](front.png)" in md
    assert "## Where the time went" in md and "| fine-tuning the top candidates | 3.00 | 23.1 % |" in md
    assert "MAPE 3.20 %, Kendall tau 0.950" in md
    assert "trial 5: PassError: boom" in md and "latency_ms <= 4" in md


def test_markdown_says_so_when_nothing_is_within_budget_and_nothing_was_measured():
    md = render_search_markdown(_report(front=[], chosen=None, finetuned=[], predictor={"n": 0}))
    assert "no chosen model" in md and "No completed trial was within the budgets" in md
    assert "predictor's error is not known" in md


def test_write_search_report_writes_a_valid_png_and_strict_json(tmp_path):
    report = _report(predictor={"mape_pct": float("nan"), "kendall_tau": None, "n": 1})
    written = write_search_report(tmp_path, report, points=_points(), recipe_toml='target = "host"\n')
    assert set(written.values()) == {"front.png", "front.json", "report.json", "report.md", "recipe.toml"}
    png = (tmp_path / "front.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100
    doc = _strict((tmp_path / "report.json").read_text())
    assert doc["predictor"]["mape_pct"] is None  # NaN written as null
    front = _strict((tmp_path / "front.json").read_text())
    assert [r["number"] for r in front["front"]] == [1, 0] and len(front["trials"]) == 5
    assert (tmp_path / "recipe.toml").read_text() == 'target = "host"\n'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_write_search_report_replaces_an_earlier_report(tmp_path):
    write_search_report(tmp_path, _report(status="stopped"), points=_points(), recipe_toml=None)
    write_search_report(tmp_path, _report(), points=_points(), recipe_toml=None)
    assert _strict((tmp_path / "report.json").read_text())["status"] == "ok"
    assert not (tmp_path / "recipe.toml").exists()


def test_plot_draws_with_no_points_at_all(tmp_path):
    write_search_report(tmp_path, _report(front=[], chosen=None), points=[], recipe_toml=None)
    assert (tmp_path / "front.png").read_bytes()[:8] == PNG_SIGNATURE


def test_trial_record_carries_the_measurement_and_the_budget_judged_on_it():
    trial = create_trial(
        values=[0.9, 3.5],
        params={"prune/conv": 4},
        distributions={"prune/conv": CategoricalDistribution([2, 4])},
        constraints={"latency_ms": -0.125},
        user_attrs={MEASURED_LATENCY: 4.4, MEASURED_SOURCE: "measured-local", "size_bytes": 123},
    )
    record = trial_record(trial, [Budget("latency_ms", 4.0)])
    assert record["assignment"] == {"prune/conv": 4} and record["size_bytes"] == 123
    assert record["measured_latency_ms"] == 4.4 and record["feasible"] is False
    assert abs(record["violations"]["latency_ms"] - 0.1) < 1e-9
    json.dumps(record, allow_nan=False)
