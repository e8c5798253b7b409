import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from repfx_deploy.cli.app import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _tiny_args(fixtures_dir):
    return ["--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir, "--input-shape", "1,3,8,8"]


def test_inspect_json_reports_params_macs_and_shapes(tiny_state_dict, fixtures_dir):
    result = _invoke("inspect", tiny_state_dict, *_tiny_args(fixtures_dir), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["params"] == 8 * 3 * 9 + 8 + 16 + 8 * 4 + 4
    assert doc["macs"] > 0 and doc["inputs"][0]["shape"] == [1, 3, 8, 8] and doc["outputs"][0]["shape"] == [1, 4]
    assert any(layer["type"] == "Conv2d" for layer in doc["layers"])


def test_export_json_is_one_document_with_verification(tmp_path, tiny_state_dict, fixtures_dir):
    out = tmp_path / "m.onnx"
    result = _invoke("export", tiny_state_dict, *_tiny_args(fixtures_dir), "-o", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # exporter chatter must not leak into stdout
    assert doc["verification"]["max_abs_error"] < 1e-4 and doc["verification"]["cosine"] > 0.9999
    assert out.exists() and doc["opset"] >= 17


def test_targets_json_lists_host():
    result = _invoke("targets", "--json")
    assert result.exit_code == 0
    assert "host" in json.loads(result.stdout)["targets"]


def test_pickle_without_opt_in_exits_2_with_reason(tmp_path, tiny_conv):
    path = tmp_path / "whole.pt"
    torch.save(tiny_conv, path)
    result = _invoke("inspect", path, "--input-shape", "1,3,8,8", "--json")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["error"]["type"] == "UntrustedPickleError" and "--trust-pickle" in doc["error"]["fix"]
    assert "Traceback" not in result.output


def test_export_refuses_existing_output_without_force(tmp_path, tiny_state_dict, fixtures_dir):
    out = tmp_path / "m.onnx"
    out.write_text("old")
    result = _invoke("export", tiny_state_dict, *_tiny_args(fixtures_dir), "-o", out)
    assert result.exit_code == 2 and "--force" in result.output
    assert out.read_text() == "old"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["inspect", "/no/such/model.pt"], "does not exist"),
        (["export", "{sd}", "--arch", "tiny_models:TinyConvNet", "--python-path", "{fx}", "--input-shape", "1,9,8,8", "-o", "{tmp}/x.onnx"], "does not accept"),
        (["export", "{sd}", "--arch", "tiny_models:TinyConvNet", "--python-path", "{fx}", "--input-shape", "1,3,8,8", "--opset", "23", "-o", "{tmp}/x.onnx"], "Opset 23"),
        (["compress", "{sd}", "--arch", "tiny_models:TinyConvNet", "--python-path", "{fx}", "--input-shape", "1,3,8,8", "--target", "toaster", "-o", "{tmp}/o"], "Unknown target"),
        (["compress", "{sd}", "--recipe", "{tmp}/missing.toml", "-o", "{tmp}/o"], "recipe"),
    ],
)
def test_bad_input_gives_one_paragraph_error_and_exit_2(tmp_path, tiny_state_dict, fixtures_dir, args, match):
    args = [a.format(sd=tiny_state_dict, fx=fixtures_dir, tmp=tmp_path) for a in args]
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert match in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "o").exists()


def test_help_is_fast_and_imports_no_heavy_library():
    code = "import sys; from repfx_deploy.cli.app import app; print(sorted(m for m in ('torch','onnx','onnxruntime','tvm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_script_error_has_no_traceback(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01garbage")
    out = subprocess.run([sys.executable, "-m", "repfx_deploy.cli", "inspect", str(junk)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "error:" in out.stderr and "Traceback" not in out.stderr


def test_compress_with_target_file_and_prune_pass_uses_the_profile_from_the_file(tmp_path, tiny_state_dict, fixtures_dir):
    import numpy as np

    board = tmp_path / "my.toml"  # a profile no built-in name refers to: the passes must use this object
    board.write_text(
        'name = "my-board"\ndescription = "this machine, described in a file"\nruntimes = ["torch", "onnxruntime"]\n'
        'channel_multiple = 4\n[tvm_target]\nkind = "llvm"\nmtriple = "detect"\nmcpu = "detect"\nnum-cores = "detect"\n'
    )
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32), y=np.arange(16) % 4)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'input_shape = "1,3,8,8"\n[data]\ncalibration = "{data}"\neval = "{data}"\n'
                      '[[passes]]\nkind = "prune"\nratio = 0.5\n')
    out = tmp_path / "res"
    result = _invoke("compress", tiny_state_dict, "--arch", "tiny_models:TinyConvNet", "--python-path", fixtures_dir,
                     "--recipe", recipe, "--target-file", board, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["target"]["name"] == "my-board" and doc["passes"][0]["kind"] == "prune"
    assert doc["compressed"]["params"] < doc["baseline"]["params"]
    for side in ("baseline", "compressed"):
        assert set(doc[side]["latency"]) == {"torch", "onnxruntime"}
        assert all(e["source"] == "measured-local" and e["latency_ms"] > 0 for e in doc[side]["latency"].values())
