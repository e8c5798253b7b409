"""The real CLI stopped by signals mid-compress: SIGTERM and SIGINT clean up and exit 143/130 with one line;
SIGKILL leaves a temporary that the next run removes; two runs to one folder do not clobber (issue 19, item 3)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from repfx_deploy.atomic import list_temps
from repfx_deploy.outlock import lock_path

BOARD = (
    'name = "no-tvm"\ndescription = "this machine, ONNX Runtime only"\nruntimes = ["torch", "onnxruntime"]\n'
    'channel_multiple = 4\n[tvm_target]\nkind = "llvm"\nmtriple = "detect"\nmcpu = "detect"\nnum-cores = "detect"\n'
)
WAIT_S = 120  # for a stage of the run to be reached on a loaded machine


@pytest.fixture
def compress_cmd(tmp_path, tiny_state_dict, fixtures_dir):
    """A seconds-long compress of the tiny model (no TVM) into ``tmp_path/res``, as the console script runs it."""
    board = tmp_path / "board.toml"
    board.write_text(BOARD)
    return [
        sys.executable, "-m", "repfx_deploy.cli", "compress", str(tiny_state_dict),
        "--arch", "tiny_models:TinyConvNet", "--python-path", str(fixtures_dir), "--input-shape", "1,3,8,8",
        "--target-file", str(board), "-o", str(tmp_path / "res"),
    ]  # fmt: skip


def _start(cmd, cwd):
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the point to stop it at"
        assert time.monotonic() < deadline, "the run never reached the point to stop it at"
        time.sleep(0.01)


def _messages(stderr: str) -> list[str]:
    """stderr without the log lines (``INFO ...`` and their wrapped continuations)."""
    return [line for line in stderr.splitlines() if line and not line.startswith(("INFO", "WARNING", "DEBUG", " "))]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("stage", ["assembling", "starting"])
def test_signal_cleans_up_and_exits_with_its_code(tmp_path, compress_cmd, sig, code, stage):
    out = tmp_path / "res"
    proc = _start(compress_cmd, tmp_path)
    if stage == "assembling":  # the result folder is being written in its temporary sibling
        _wait_for(lambda: list_temps(out), proc)
    else:  # the output is claimed; the model is being loaded
        _wait_for(lambda: lock_path(out).exists(), proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == code, stderr
    assert _messages(stderr) == [f"error: Stopped by {signal.Signals(sig).name}; nothing partial was kept."]
    assert "Traceback" not in stderr
    assert not out.exists() and list_temps(out) == [] and not lock_path(out).exists()


def test_sigkill_leaves_a_temporary_that_the_next_run_removes(tmp_path, compress_cmd):
    out = tmp_path / "res"
    proc = _start(compress_cmd, tmp_path)
    _wait_for(lambda: list_temps(out), proc)
    proc.kill()
    proc.communicate(timeout=WAIT_S)
    (left,) = list_temps(out)
    assert f".{proc.pid}." in left.name and not out.exists()

    rerun = subprocess.run([*compress_cmd, "-v"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert not left.exists() and list_temps(out) == [] and not lock_path(out).exists()
    assert f"left by process {proc.pid}" in rerun.stderr
    assert {"model.onnx", "report.json", "report.md", "recipe.toml"} <= {p.name for p in out.iterdir()}


def test_two_concurrent_compresses_to_one_folder_one_wins_the_other_is_refused(tmp_path, compress_cmd):
    out = tmp_path / "res"
    first = _start(compress_cmd, tmp_path)
    _wait_for(lambda: lock_path(out).exists(), first)
    started = time.monotonic()
    second = subprocess.run([*compress_cmd, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    refused_after = time.monotonic() - started
    first_out, first_err = first.communicate(timeout=WAIT_S)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    error = json.loads(second.stdout)["error"]
    assert error["type"] == "OutputLockedError" and f"process {first.pid}" in error["problem"]
    assert refused_after < 30  # at once: before loading the model, not after its minutes of work
    assert (out / "report.json").exists() and list_temps(out) == [] and not lock_path(out).exists()


def test_second_sigterm_while_unwinding_exits_at_once(tmp_path):
    """A stuck cleanup must not make the process unkillable: the second signal exits with the same code."""
    script = tmp_path / "stuck.py"
    script.write_text(
        "import time\n"
        "from repfx_deploy.cli.output import Terminated, install_signal_handlers\n"
        "install_signal_handlers()\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "except Terminated:\n"
        "    print('unwinding', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "unwinding"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143


def test_signal_ignored_at_start_stays_ignored(tmp_path):
    script = tmp_path / "ignored.py"
    script.write_text(
        "import os, signal\n"
        "from repfx_deploy.cli.output import install_signal_handlers\n"
        "install_signal_handlers()\n"
        "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        check=True,
    )
    assert out.stdout.split() == ["True", "False"]  # SIGINT left ignored, SIGTERM handled


def test_signal_inside_an_uninterrupted_step_is_raised_right_after_it(tmp_path):
    """Between making a lock file (or a temporary) and registering it for cleanup, a signal must wait."""
    script = tmp_path / "step.py"
    script.write_text(
        "import os, signal\n"
        "from repfx_deploy.cli.output import Terminated, install_signal_handlers\n"
        "from repfx_deploy.interrupts import uninterrupted\n"
        "install_signal_handlers()\n"
        "steps = []\n"
        "try:\n"
        "    with uninterrupted():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        for _ in range(1000):\n"
        "            pass  # bytecodes at which the handler runs\n"
        "        steps.append('step finished')\n"
        "    steps.append('after the step')\n"
        "except Terminated:\n"
        "    steps.append('raised')\n"
        "print(steps)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['step finished', 'raised']"
