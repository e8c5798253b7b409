"""Budgets and the search's settings: every written form parses, every wrong value is refused with a fix."""

from __future__ import annotations

import pytest

from repfx_deploy.errors import InputError
from repfx_deploy.search.config import Budget, SearchConfig, parse_budget


@pytest.mark.parametrize(
    ("text", "metric", "limit"),
    [
        ("latency_ms=4", "latency_ms", 4.0),
        ("20ms", "latency_ms", 20.0),
        ("4.5ms", "latency_ms", 4.5),
        (" 0.02s ", "latency_ms", 20.0),
        ("latency_ms=500us", "latency_ms", 0.5),
        ("2MB", "size_bytes", 2e6),
        ("size_bytes=2e6", "size_bytes", 2e6),
        ("500KiB", "size_bytes", 512000.0),
    ],
)
def test_parse_budget_reads_each_form(text, metric, limit):
    budget = parse_budget(text)
    assert budget.metric == metric
    assert budget.limit == pytest.approx(limit)


@pytest.mark.parametrize("text", ["4", "fast", "latency=4", "size_bytes=4ms", "4 parsecs", "latency_ms=-1", "0ms"])
def test_parse_budget_refuses_with_a_fix_when_malformed(text):
    with pytest.raises(InputError) as info:
        parse_budget(text)
    assert info.value.fix


def test_budget_violation_is_relative_and_nonpositive_within():
    budget = Budget("latency_ms", 4.0)
    assert budget.violation(5.0) == pytest.approx(0.25)
    assert budget.violation(4.0) == 0.0
    assert budget.violation(2.0) == pytest.approx(-0.5)
    assert str(budget) == "latency_ms=4"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sampler": "cmaes"},
        {"strategy": "random"},
        {"trials": 0},
        {"trials": True},
        {"time_budget_s": 0},
        {"time_budget_s": float("inf")},
        {"seed": -1},
        {"seed": 2**32},
        {"storage": "study.db"},
        {"study_name": " "},
        {"workers": 0},
        {"runtime": "tflite"},
        {"measure_near_front": -1},
        {"budgets": (Budget("latency_ms", 4), Budget("latency_ms", 5))},
        {"budgets": ["latency_ms=4"]},
    ],
)
def test_search_config_refuses_when_a_setting_is_wrong(kwargs):
    with pytest.raises(InputError):
        SearchConfig(**kwargs)


def test_search_config_round_trips_through_its_dict():
    config = SearchConfig(
        budgets=(parse_budget("4ms"), parse_budget("2MB")), sampler="nsga2", trials=12, time_budget_s=60, seed=3
    )
    again = SearchConfig.from_dict(config.to_dict())
    assert again == config
    assert again.budget("size_bytes") == Budget("size_bytes", 2e6)
    assert again.budget("latency_ms") is not None


def test_search_config_from_dict_refuses_when_a_key_is_unknown():
    with pytest.raises(InputError, match="unknown"):
        SearchConfig.from_dict({"trails": 3})
