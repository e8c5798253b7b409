"""``repfx-deploy search`` and ``compress --latency-budget`` on a tiny model and tiny data."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from repfx_deploy.cli.app import app
from repfx_deploy.cli.search import parse_duration
from repfx_deploy.errors import InputError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def inputs(tmp_path, tiny_state_dict, fixtures_dir, monkeypatch):
    monkeypatch.setenv("REPFX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name, n in (("train", 96), ("eval", 16)):
        np.savez(
            tmp_path / f"{name}.npz", x=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 4, n)
        )
    host = (ROOT / "targets" / "host.toml").read_text()
    (tmp_path / "host2.toml").write_text(
        host.replace('name = "host"', 'name = "host2"').replace("channel_multiple = 16", "channel_multiple = 2")
    )
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'input_shape = "1,3,8,8"\n[data]\ncalibration_samples = 32\n[data.preprocess]\n'
        'mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\nlayout = "NCHW"\n'
        '[[passes]]\nkind = "prune"\nratio = 0.25\n[[passes]]\nkind = "quantize"\n'
        'calibration_method = "minmax"\n'
    )
    common = [
        "--arch",
        "tiny_models:TinyConvNet",
        "--python-path",
        fixtures_dir,
        "--target-file",
        tmp_path / "host2.toml",
        "--calibration",
        tmp_path / "train.npz",
        "--eval-data",
        tmp_path / "eval.npz",
    ]
    return tmp_path, tiny_state_dict, recipe, [str(a) for a in common]


def test_search_cli_ends_with_the_report_the_recipe_and_the_chosen_model(inputs):
    tmp_path, model, recipe, common = inputs
    out = tmp_path / "out"
    args = [
        "search",
        str(model),
        "--recipe",
        str(recipe),
        *common,
        "--train-data",
        str(tmp_path / "train.npz"),
        "--budget",
        "1000ms",
        "--trials",
        "4",
        "--top-k",
        "1",
        "--finetune-steps",
        "2",
        "--runtime",
        "onnxruntime",
        "-o",
        str(out),
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "ok" and doc["trials"]["target"] == 4 and doc["chosen"] is not None
    assert doc["budgets"] == [{"metric": "latency_ms", "limit": 1000.0}]
    for name in ("study.db", "report.md", "report.json", "front.json", "front.png", "recipe.toml"):
        assert (out / name).is_file(), name
    assert (out / "best" / "model.onnx").is_file()
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = runner.invoke(app, [a for a in args if a != "--json"])  # a rerun resumes: nothing left to run
    assert text.exit_code == 0, text.output
    assert "## Pareto front" in text.stdout and "Where the time went" in text.stdout


def test_compress_with_a_latency_budget_runs_the_search_and_ships_the_chosen_model(inputs, monkeypatch):
    from repfx_deploy.pipeline import search as pipeline_search

    tmp_path, model, _, common = inputs
    small = functools.partial(
        pipeline_search.SearchConfig,
        trials=3,
        top_k=1,
        finetune_steps=1,
        bn_samples=32,
        holdout_samples=48,
        runtime="onnxruntime",
    )
    monkeypatch.setattr(pipeline_search, "SearchConfig", small)  # the defaults are for real models
    out = tmp_path / "shipped"
    result = runner.invoke(
        app,
        [
            "compress",
            str(model),
            "--input-shape",
            "1,3,8,8",
            *common,
            "--latency-budget",
            "1000ms",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["space"]["passes"] == ["prune", "quantize"]  # no recipe: prune, and int8 as there is calibration data
    assert doc["chosen"] is not None and (out / "best" / "report.json").is_file()


def test_compress_latency_budget_refuses_a_size(inputs):
    tmp_path, model, _, common = inputs
    result = runner.invoke(
        app,
        [
            "compress",
            str(model),
            "--input-shape",
            "1,3,8,8",
            *common,
            "--latency-budget",
            "2MB",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "is a size, not a latency" in result.output


def test_search_cli_refuses_a_bad_budget_before_any_work(inputs):
    tmp_path, model, recipe, common = inputs
    result = runner.invoke(
        app, ["search", str(model), "--recipe", str(recipe), *common, "--budget", "fast", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "fast" in result.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h", 3600), ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("45", 45), ("0.5h", 1800)]
)
def test_parse_duration_reads_hours_minutes_and_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1d", "0s", "1h30"])
def test_parse_duration_refuses_what_is_not_a_duration(text):
    with pytest.raises(InputError):
        parse_duration(text)
