"""``repfx-deploy space``: a recipe's knobs on a model, as a table and as JSON."""

import json

from typer.testing import CliRunner

from repfx_deploy.cli.app import app

runner = CliRunner()


def _recipe(tmp_path, passes: str):
    recipe = tmp_path / "r.toml"
    recipe.write_text('input_shape = "1,3,8,8"\n' + passes)
    return recipe


def _space(tmp_path, tiny_state_dict, fixtures_dir, passes: str, *extra):
    args = ["space", tiny_state_dict, "--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir,
            "--recipe", _recipe(tmp_path, passes), *extra]
    return runner.invoke(app, [str(a) for a in args])


def test_space_json_lists_every_pass_site_with_defaults_that_match_the_recipe(tmp_path, tiny_state_dict, fixtures_dir):
    passes = '[[passes]]\nkind = "prune"\nratio = 0.5\n[[passes]]\nkind = "prune"\nratio = 0.25\n'
    result = _space(tmp_path, tiny_state_dict, fixtures_dir, passes, "--target", "rpi4", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["target"] == "rpi4" and doc["channel_multiple"] == 8
    assert [p["prefix"] for p in doc["passes"]] == ["prune.1", "prune.2"]
    sites = doc["passes"][0]["sites"]
    assert sites and all(s["knob"] == "channels_kept" and s["default"] in s["choices"] for s in sites)
    assert doc["default"] == {f"{p['prefix']}/{s['name']}": s["default"] for p in doc["passes"] for s in p["sites"]}
    sizes = [p["size"] for p in doc["passes"]]
    assert doc["size"] == sizes[0] * sizes[1]


def test_space_table_names_each_site_by_pass_and_layer(tmp_path, tiny_state_dict, fixtures_dir):
    result = _space(tmp_path, tiny_state_dict, fixtures_dir, '[[passes]]\nkind = "prune"\nratio = 0.5\n')
    assert result.exit_code == 0, result.output
    assert "prune/" in result.stdout and "channels_kept" in result.stdout and "space size:" in result.stdout


def test_space_without_passes_exits_2_naming_the_fix(tmp_path, tiny_state_dict, fixtures_dir):
    result = _space(tmp_path, tiny_state_dict, fixtures_dir, "")
    assert result.exit_code == 2 and "no passes" in result.output
