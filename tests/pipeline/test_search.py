"""End to end: a small search on a tiny model and tiny data (ONNX Runtime, no TVM build), its outputs, its
reproducing recipe, a resumed rerun, and the seeds it starts from."""

import json
from pathlib import Path

import numpy as np
import pytest

from repfx_deploy.errors import OutputExistsError, RecipeError
from repfx_deploy.ingest.loader import LoadOptions
from repfx_deploy.measure.runner import run_all
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.passes.chain import RecipeSpace
from repfx_deploy.passes.protocol import SearchSpace, Site
from repfx_deploy.pipeline.compress import CompressRequest, compress
from repfx_deploy.pipeline.search import SearchRequest, check_search_folder, run_search, uniform_seeds
from repfx_deploy.recipe import load_recipe
from repfx_deploy.search.config import SearchConfig, parse_budget

FAST = TimingConfig(warmup=1, repeats=3, min_time_s=0.0, remeasure=0)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def search_inputs(tmp_path, tiny_state_dict, monkeypatch):
    """A labelled train set, calibration and eval sets, a host profile with 2-channel steps (so the tiny
    net's 8 channels offer 2, 4, 6, 8), and a prune + quantize recipe."""
    monkeypatch.setenv("REPFX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name, n in (("train", 96), ("calib", 32), ("eval", 16)):
        x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        np.savez(tmp_path / f"{name}.npz", x=x, y=rng.integers(0, 4, n))
    host = (ROOT / "targets" / "host.toml").read_text()
    (tmp_path / "host2.toml").write_text(
        host.replace('name = "host"', 'name = "host2"').replace("channel_multiple = 16", "channel_multiple = 2")
    )
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'''
input_shape = "1,3,8,8"
[data]
train = "{tmp_path / "train.npz"}"
calibration = "{tmp_path / "calib.npz"}"
eval = "{tmp_path / "eval.npz"}"
calibration_samples = 32
[data.preprocess]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
layout = "NCHW"
[[passes]]
kind = "prune"
ratio = 0.25
[[passes]]
kind = "quantize"
calibration_method = "minmax"
''')
    return tmp_path, tiny_state_dict, recipe


def _request(tmp_path, model, recipe, fixtures_dir, **config):
    settings = dict(
        trials=5,
        top_k=2,
        finetune_steps=2,
        bn_samples=32,
        holdout_samples=48,
        runtime="onnxruntime",
        budgets=(parse_budget("latency_ms=1000"),),
        measure_near_front=1,
    )
    return SearchRequest(
        model_path=model,
        out_dir=tmp_path / "out",
        recipe=load_recipe(recipe),
        config=SearchConfig(**{**settings, **config}),
        load=LoadOptions(arch="tiny_models:TinyConvNet", python_path=(fixtures_dir,)),
        target_file=tmp_path / "host2.toml",
        timing=FAST,
    )


def _outputs(onnx_path, samples):
    return run_all(OrtRunner(onnx_path, 1), samples)


def test_search_writes_the_front_report_recipe_and_a_best_folder_that_the_recipe_replays(search_inputs, fixtures_dir):
    tmp_path, model, recipe = search_inputs
    request = _request(tmp_path, model, recipe, fixtures_dir)
    report = run_search(request)
    out = tmp_path / "out"
    assert {"study.db", "report.md", "report.json", "front.json", "front.png", "recipe.toml", "best"} <= {
        p.name for p in out.iterdir()
    }
    assert report["status"] == "ok" and report["trials"]["complete"] + report["trials"]["failed"] == 5
    assert report["front"] and all(r["measured_latency_ms"] is not None for r in report["front"])
    chosen = report["chosen"]
    assert chosen is not None and chosen["replay"]["same_model"]
    assert (out / "best" / "model.onnx").exists() and (out / "best" / "report.json").exists()
    doc = json.loads((out / "report.json").read_text())
    assert doc["chosen"]["number"] == chosen["number"] and set(doc["time_s"]) >= {"proxy_eval_s", "total_s"}
    # the reproducing recipe, replayed by compress, gives the model in best/
    replay = compress(
        CompressRequest(
            model_path=model,
            out_dir=tmp_path / "replay",
            recipe=load_recipe(out / "recipe.toml"),
            load=request.load,
            target_file=request.target_file,
            timing=FAST,
            compile_tvm=False,
        )
    )
    assert replay["status"] == "ok"
    samples = [[np.random.default_rng(s).standard_normal((1, 3, 8, 8)).astype(np.float32)] for s in range(4)]
    for ours, theirs in zip(
        _outputs(out / "best" / "model.onnx", samples), _outputs(tmp_path / "replay" / "model.onnx", samples)
    ):
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5)
    # run again: the study resumes with every trial done, nothing is measured again
    again = run_search(request)
    assert again["trials"]["complete"] == report["trials"]["complete"]
    assert again["predictor"]["measured_now"] == 0
    assert again["chosen"]["number"] == chosen["number"]


def test_search_with_a_budget_nothing_meets_reports_no_chosen_model(search_inputs, fixtures_dir):
    tmp_path, model, recipe = search_inputs
    report = run_search(
        _request(tmp_path, model, recipe, fixtures_dir, trials=2, budgets=(parse_budget("latency_ms=0.000001"),))
    )
    out = tmp_path / "out"
    assert report["status"] == "no candidate within budget" and report["chosen"] is None
    assert not (out / "best").exists() and not (out / "recipe.toml").exists()
    assert "no chosen model" in (out / "report.md").read_text()


def test_search_refuses_a_folder_that_holds_something_else(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.onnx").write_text("x")
    with pytest.raises(OutputExistsError):
        check_search_folder(tmp_path / "other")
    (tmp_path / "empty").mkdir()
    check_search_folder(tmp_path / "empty")  # an empty folder, or a missing one, is fine
    check_search_folder(tmp_path / "missing")


def test_search_without_passes_is_a_recipe_error(search_inputs, fixtures_dir):
    tmp_path, model, _ = search_inputs
    empty = tmp_path / "empty.toml"
    empty.write_text('input_shape = "1,3,8,8"\n')
    with pytest.raises(RecipeError, match="no passes"):
        run_search(_request(tmp_path, model, empty, fixtures_dir))


def test_uniform_seeds_start_with_the_defaults_and_set_each_pass_alone_and_together():
    space = RecipeSpace(
        ("prune", "quantize"),
        (
            SearchSpace("prune", (Site("a", "channels_kept", (2, 4, 6, 8), 6), Site("b", "channels_kept", (4, 8), 8))),
            SearchSpace("quantize", (Site("fc", "weight_bits", (4, 8, "float"), 8),)),
        ),
    )
    seeds = uniform_seeds(space, fractions=(0.5,))
    assert seeds[0] == {"prune/a": 6, "prune/b": 8, "quantize/fc": 8}
    assert {"prune/a": 6, "prune/b": 8, "quantize/fc": 8} in seeds  # 50 % of (4, 8, "float") is the default
    assert {"prune/a": 6, "prune/b": 8, "quantize/fc": 8} == seeds[0] and len(seeds) == len({str(s) for s in seeds})
    quarter = uniform_seeds(space, fractions=(0.25,))
    assert {"prune/a": 4, "prune/b": 4, "quantize/fc": 8} in quarter  # prune alone at a quarter
    assert {"prune/a": 6, "prune/b": 8, "quantize/fc": 8} in quarter


def test_request_payload_round_trips_what_a_worker_process_rebuilds(search_inputs, fixtures_dir):
    from repfx_deploy.pipeline.search import request_from_payload, request_payload

    tmp_path, model, recipe = search_inputs
    request = _request(tmp_path, model, recipe, fixtures_dir)
    payload = json.loads(json.dumps(request_payload(request)))
    back = request_from_payload(request.config, request.out_dir, payload)
    assert back.recipe.passes == request.recipe.passes and back.recipe.data == request.recipe.data
    assert back.load.arch == request.load.arch and back.timing == request.timing
    assert back.target_file == request.target_file.resolve()


def test_search_with_two_workers_shares_the_trials_and_ships_a_result(search_inputs, fixtures_dir):
    tmp_path, model, recipe = search_inputs
    report = run_search(_request(tmp_path, model, recipe, fixtures_dir, trials=4, workers=2, top_k=1))
    assert report["trials"]["complete"] + report["trials"]["failed"] == 4
    assert report["chosen"] is not None
    logs = sorted(p.name for p in (tmp_path / "out" / "workers").iterdir())
    assert logs == ["worker-0.log", "worker-1.log"]


def test_search_with_the_greedy_strategy_ships_a_result(search_inputs, fixtures_dir):
    tmp_path, model, recipe = search_inputs
    report = run_search(_request(tmp_path, model, recipe, fixtures_dir, trials=4, strategy="greedy", top_k=1))
    assert report["strategy"] == "greedy" and report["trials"]["complete"] >= 1
    assert report["chosen"] is not None and (tmp_path / "out" / "recipe.toml").exists()


def test_an_interrupted_search_keeps_the_study_and_a_report_and_a_rerun_finishes_it(
    search_inputs, fixtures_dir, monkeypatch
):
    import dataclasses

    from repfx_deploy.search import objective

    tmp_path, model, recipe = search_inputs
    real = objective.run_study

    def interrupted_after_two(study, obj, config, progress=False):
        real(study, obj, dataclasses.replace(config, trials=2), progress)
        raise KeyboardInterrupt

    monkeypatch.setattr(objective, "run_study", interrupted_after_two)
    request = _request(tmp_path, model, recipe, fixtures_dir, trials=4, top_k=1)
    with pytest.raises(KeyboardInterrupt):
        run_search(request)
    out = tmp_path / "out"
    doc = json.loads((out / "report.json").read_text())
    assert doc["status"] == "stopped" and doc["chosen"] is None and doc["trials"]["complete"] == 2
    assert (out / "study.db").exists() and not (out / "best").exists()
    monkeypatch.setattr(objective, "run_study", real)
    report = run_search(request)
    assert report["status"] == "ok" and report["trials"]["complete"] == 4
    times = report["time_s"]  # this run's split: the earlier run's trials are not in it
    named = sum(v for k, v in times.items() if k not in ("total_s", "other_s"))
    assert named <= times["total_s"]


@pytest.mark.tvm
def test_search_on_tvm_times_candidates_with_the_kernel_table_and_ships_a_tvm_artifact(search_inputs, fixtures_dir):
    tmp_path, model, recipe = search_inputs
    report = run_search(_request(tmp_path, model, recipe, fixtures_dir, trials=3, top_k=1, runtime="tvm"))
    assert report["runtime"] == "tvm" and report["predictor"]["tier"] == "lut-tvm"
    assert report["chosen"]["latency_source"] == "measured-local"
    assert (tmp_path / "out" / "best" / "tvm" / "model.so").exists()
