"""Recipes of the wrong types and artifact manifests without inputs: exit 2 with the key or file named and the
fix, never an internal error (exit 3)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from repfx_deploy.cli.app import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _error(result) -> dict:
    assert result.exit_code == 2, result.output
    assert "Internal error" not in result.output and "Traceback" not in result.output
    return json.loads(result.stdout)["error"]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('input_shape = "big"', "input_shape"),
        ('input_shape = ["1,3,8,8", "x"]', "input_shape"),
        ("threads = 100000000000", "threads"),
        ('target = ["host"]', "target"),
        ("data = 5", "data"),
        ('[data]\neval_samples = "all"', "data.eval_samples"),
        ("[data]\ncalibration = 5", "data.calibration"),
        ('[data]\npreprocess = "imagenet"', "data.preprocess"),
        ('[data.preprocess]\nmean = [0.5, "x"]', "data.preprocess.mean"),
        ("[data.preprocess]\nstd = [[0.2]]", "data.preprocess.std"),
        ("[data.preprocess]\nsize = 1000000", "preprocess.size"),
        ("[data.preprocess]\nlayout = 4", "data.preprocess.layout"),
        ("passes = [1, 2]", "passes[0]"),
        ('[[passes]]\nkind = "prune"\nratio = "half"', "passes[0].ratio"),
        ('[[passes]]\nkind = "prune"\nratio = [0.5]', "passes[0].ratio"),
        ('[[passes]]\nkind = "quantize"\nlayer_bits = {conv = "eight"}', "passes[0].layer_bits.conv"),
        ('[[passes]]\nkind = "quantize"\nlayer_bits = [8]', "passes[0].layer_bits"),
        ('[[passes]]\nkind = "prune"\n[passes.ratio]\nx = 1', "passes[0].ratio"),
    ],
)
def test_recipe_of_wrong_types_exits_2_naming_the_key(tmp_path, tiny_state_dict, fixtures_dir, toml, key):
    recipe = tmp_path / "r.toml"
    recipe.write_text(toml + "\n")
    result = _invoke(
        "compress", tiny_state_dict, "--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir,
        "--input-shape", "1,3,8,8", "--recipe", recipe, "-o", tmp_path / "out", "--json",
    )  # fmt: skip
    error = _error(result)
    assert error["type"] == "RecipeError" and key in error["problem"], error
    assert error["fix"] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("manifest", "words"),
    [
        ({"format": "repfx-deploy/tvm-artifact", "library": "model.so"}, ("no inputs", "missing")),
        ({"format": "repfx-deploy/tvm-artifact", "inputs": []}, ("no inputs",)),
        ({"format": "repfx-deploy/tvm-artifact", "inputs": [{"shape": [1, 3]}]}, ("malformed input",)),
        ({"format": "repfx-deploy/tvm-artifact", "inputs": [{"name": "x", "shape": [0]}]}, ("malformed input",)),
        (["not", "an", "object"], ("not a JSON object",)),
    ],
)
def test_bench_of_artifact_whose_manifest_lacks_inputs_exits_2(tmp_path, manifest, words):
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps(manifest))
    (art / "model.so").write_bytes(b"")
    error = _error(_invoke("bench", art, "--json"))
    assert error["type"] == "ModelLoadError" and str(art / "manifest.json") in error["problem"]
    assert all(w in error["problem"] for w in words) and "compile" in error["fix"]


def test_manifest_is_written_as_strict_json_and_read_back(tmp_path):
    from repfx_deploy.compile.manifest import read_manifest, write_manifest

    write_manifest(
        tmp_path / "manifest.json",
        {"inputs": [{"name": "x", "shape": [1, 3], "dtype": "float32"}], "tuning": {"tuned_us": float("inf")}},
    )
    text = (tmp_path / "manifest.json").read_text()
    assert "Infinity" not in text and read_manifest(tmp_path)["tuning"]["tuned_us"] is None
