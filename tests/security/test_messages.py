"""Messages carry user-supplied text verbatim (no rich markup or emoji codes read in it), and with --json a bad
flag is a JSON error document on stdout, not a usage box (issue 19, item 5)."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from repfx_deploy.cli.app import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "repfx_deploy.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", ["x[/bold]y.pt", "[data].pt", "[bold red]loud[/bold red].pt", ":thumbs_up:.pt"])
def test_error_message_keeps_markup_like_path_verbatim(tmp_path, name):
    path = tmp_path / name
    result = _invoke("inspect", path)
    assert result.exit_code == 2, result.output
    assert repr(str(path)) in result.output.replace("\n", "")
    assert "Traceback" not in result.output


def test_error_message_with_markup_like_path_is_verbatim_in_json_too(tmp_path):
    path = tmp_path / "[/bold]" / "m.pt"
    result = _invoke("inspect", path, "--json")
    assert result.exit_code == 2
    assert str(path) in json.loads(result.stdout)["error"]["problem"]


def test_table_keeps_markup_like_layer_names_verbatim(tmp_path, tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx))
    model.graph.node[0].name = "conv[/bold][data]"
    path = tmp_path / "named.onnx"
    onnx.save(model, str(path))
    result = _invoke("inspect", path)
    assert result.exit_code == 0, result.output
    assert "conv[/bold][data]" in result.output


def test_stdout_and_stderr_consoles_read_no_markup_or_emoji():
    from repfx_deploy.cli.output import stderr, stdout

    for console in (stdout, stderr):
        with console.capture() as captured:
            console.print("[data] [/bold] :thumbs_up:")
        assert captured.get().strip() == "[data] [/bold] :thumbs_up:"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["compress", "m.pt", "--bogus", "--json"], "No such option: --bogus"),
        (["inspect", "--json"], "Missing argument"),
        (["bench", "m.onnx", "--repeats", "1", "--json"], "--repeats"),
        (["nosuch", "--json"], "No such command"),
        (["--json", "targets", "--threads", "2"], "No such option"),
    ],
)
def test_bad_flag_with_json_is_a_json_error_document_and_exit_2(args, problem):
    out = _cli(*args)
    assert out.returncode == 2, out.stderr
    error = json.loads(out.stdout)["error"]  # stdout is one JSON document, nothing else
    assert error["type"] == "UsageError" and problem in error["problem"]
    assert "--help" in error["fix"]
    assert "╭" not in out.stdout + out.stderr  # no usage box


def test_bad_flag_without_json_keeps_the_usage_box():
    out = _cli("compress", "m.pt", "--bogus")
    assert out.returncode == 2 and out.stdout == ""
    assert "No such option" in out.stderr and "Usage" in out.stderr


@pytest.mark.parametrize("args", [["--help"], ["compress", "--help"], ["compress", "--help", "--json"]])
def test_help_still_prints_and_exits_0(args):
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout and "Traceback" not in out.stderr


def test_json_command_that_succeeds_through_the_console_script_exits_0():
    out = _cli("targets", "--json")
    assert out.returncode == 0 and "host" in json.loads(out.stdout)["targets"]
