"""report.json, and every JSON document written through ``strict_json``, is strict JSON: NaN and Infinity
(which Python writes by default and no strict parser reads) become null."""

import json
import math

import numpy as np
import pytest

from repfx_deploy.report import strict_json
from repfx_deploy.report.writer import write_report


def _strict_load(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _side(accuracy, loss):
    return {
        "params": 100,
        "macs": 1000,
        "size_bytes": 400,
        "accuracy": accuracy,
        "loss": loss,
        "agreement": 1.0,
        "fidelity": None,
        "latency_ms": {},
        "latency": {},
    }


def test_report_json_is_strict_with_nan_and_inf_written_as_null(tmp_path):
    report = {
        "status": "ok",
        "model": {"path": "m.pt"},
        "target": {"name": "host", "description": "this machine"},
        "threads": 1,
        "baseline": _side(float("nan"), float("inf")),
        "compressed": _side(np.float64(0.25), np.float32("nan")),
        "stats": (np.float32("-inf"), 1.5, [np.int64(3)]),
    }
    write_report(tmp_path, report, recipe_toml="")
    doc = _strict_load((tmp_path / "report.json").read_text())
    assert doc["baseline"]["accuracy"] is None and doc["baseline"]["loss"] is None
    assert doc["compressed"]["accuracy"] == 0.25 and doc["compressed"]["loss"] is None
    assert doc["stats"] == [None, 1.5, [3]]
    assert (tmp_path / "report.md").read_text().startswith("# repfx-deploy report: m.pt")


def test_strict_json_keeps_every_valid_value_as_it_is():
    doc = {"a": 1, "b": [0.5, True, None, "nan"], "c": {"d": -0.0, "e": "Infinity"}}
    assert _strict_load(strict_json.dumps(doc)) == doc
    assert strict_json.finite(math.nan) is None and strict_json.finite(np.array([1.0, np.inf])) == [1.0, None]


def test_strict_json_refuses_what_slips_past_the_conversion():
    class Weird:
        pass

    with pytest.raises(ValueError):
        strict_json.dumps({"x": Weird()}, default=lambda o: float("nan"))
