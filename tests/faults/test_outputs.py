"""Output folders under faults: a path that appears mid-run is kept, one writer per output, stale temporaries of
killed runs are removed, and artifacts get the umask's permissions (issue 19, items 3 and 9)."""

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from repfx_deploy.atomic import atomic_dir, atomic_file, claim_output, list_temps, remove_stale_temps
from repfx_deploy.errors import InputError, OutputExistsError, OutputLockedError
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.outlock import is_locked, lock_holder, lock_path, output_lock

FAST = TimingConfig(warmup=1, repeats=3, min_time_s=0.0, remeasure=0)
# A profile without TVM: a compress to it takes seconds, which is all these tests need.
BOARD = (
    'name = "no-tvm"\ndescription = "this machine, ONNX Runtime only"\nruntimes = ["torch", "onnxruntime"]\n'
    'channel_multiple = 4\n[tvm_target]\nkind = "llvm"\nmtriple = "detect"\nmcpu = "detect"\nnum-cores = "detect"\n'
)


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _compress_request(tmp_path, tiny_state_dict, fixtures_dir, out, **kw):
    from repfx_deploy.ingest.loader import LoadOptions
    from repfx_deploy.pipeline.compress import CompressRequest
    from repfx_deploy.recipe import load_recipe

    board = tmp_path / "board.toml"
    board.write_text(BOARD)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('input_shape = "1,3,8,8"\n')
    return CompressRequest(
        model_path=tiny_state_dict,
        out_dir=out,
        recipe=load_recipe(recipe),
        load=LoadOptions(arch="tiny_models:TinyConvNet", python_path=(fixtures_dir,)),
        target_file=board,
        timing=FAST,
        **kw,
    )


def test_atomic_dir_keeps_a_file_that_appeared_mid_run_when_not_forced(tmp_path):
    out = tmp_path / "result"
    with pytest.raises(OutputExistsError, match="appeared while"):
        with atomic_dir(out) as tmp:
            (tmp / "model.onnx").write_text("ours")
            out.write_text("the user's")
    assert out.read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]  # no temporary, no lock file


@pytest.mark.parametrize("content", ["empty", "full"])
def test_atomic_dir_keeps_a_folder_that_appeared_mid_run_when_not_forced(tmp_path, content):
    out = tmp_path / "result"
    with pytest.raises(OutputExistsError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("ours")
            out.mkdir()
            if content == "full":
                (out / "b").write_text("the user's")
    assert [p.name for p in out.iterdir()] == ([] if content == "empty" else ["b"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_atomic_dir_with_force_replaces_what_appeared_mid_run(tmp_path):
    out = tmp_path / "result"
    with atomic_dir(out, force=True) as tmp:
        (tmp / "a").write_text("ours")
        out.write_text("in the way")
    assert (out / "a").read_text() == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_atomic_file_keeps_a_file_that_appeared_mid_run_when_not_forced(tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(OutputExistsError, match="appeared while"):
        with atomic_file(out, force=False) as tmp:
            tmp.write_text("ours")
            out.write_text("the user's")
    assert out.read_text() == "the user's"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_compress_keeps_a_user_file_created_at_the_output_mid_run(tmp_path, tiny_state_dict, fixtures_dir, monkeypatch):
    """The reported case: check_output ran only at the start, and atomic_dir then deleted the user's file."""
    import repfx_deploy.report.writer as writer
    from repfx_deploy.pipeline.compress import compress

    out = tmp_path / "res"
    real_write = writer.write_report

    def write_then_user_saves(folder, report, **kw):
        real_write(folder, report, **kw)
        out.write_text("notes the user saved meanwhile")

    monkeypatch.setattr(writer, "write_report", write_then_user_saves)
    with pytest.raises(OutputExistsError):
        compress(_compress_request(tmp_path, tiny_state_dict, fixtures_dir, out))
    assert out.read_text() == "notes the user saved meanwhile"
    assert list_temps(out) == [] and not lock_path(out).exists()


def test_second_writer_of_an_output_is_refused_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "res"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from repfx_deploy.outlock import output_lock
            with output_lock({str(out)!r}):
                print("held", flush=True)
                sys.stdin.readline()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(out) and lock_holder(out) == holder.pid
        with pytest.raises(OutputLockedError, match=f"process {holder.pid}"):
            with atomic_dir(out):
                pass
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert not lock_path(out).exists() and not out.exists()  # released, and the refused run wrote nothing


def test_compress_to_a_locked_output_fails_before_loading_the_model(
    tmp_path, tiny_state_dict, fixtures_dir, monkeypatch
):
    import threading

    import repfx_deploy.pipeline.compress as pipeline

    out = tmp_path / "res"
    loads = []
    monkeypatch.setattr(pipeline, "load_torch_model", lambda *a, **k: loads.append(a))
    held, done = threading.Event(), threading.Event()

    def hold():  # another thread counts as another writer, like another process
        with output_lock(out):
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(OutputLockedError, match=f"process {os.getpid()}"):
            pipeline.compress(_compress_request(tmp_path, tiny_state_dict, fixtures_dir, out))
    finally:
        done.set()
        t.join()
    assert loads == [] and not lock_path(out).exists()


def test_lock_is_reentrant_in_one_thread_and_released_with_the_outermost(tmp_path):
    out = tmp_path / "res"
    with claim_output(out, force=False):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("x")
        assert lock_path(out).exists() and lock_holder(out) == os.getpid()
    assert not lock_path(out).exists() and (out / "a").read_text() == "x"


def test_stale_lock_file_of_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "res"
    lock_path(out).write_text(f"{_dead_pid()}\n")  # what SIGKILL leaves: the file, without its flock
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("x")
    assert (out / "a").exists() and not lock_path(out).exists()


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "res"
    dead = tmp_path / f".res.{_dead_pid()}.0badf00d.tmp"
    dead.mkdir()
    (dead / "model.onnx").write_text("half")
    mine = tmp_path / f".res.{os.getpid()}.deadbeef.tmp"  # our pid, but not one of our temporaries: stale too
    mine.write_text("half")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".res.{sleeper.pid}.cafef00d.tmp"
        live.mkdir()
        other = tmp_path / f".other.{_dead_pid()}.0badf00d.tmp"  # another output's: not ours to remove
        other.mkdir()
        assert sorted(remove_stale_temps(out)) == sorted([dead, mine])
        assert live.exists() and other.exists() and not dead.exists() and not mine.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    with atomic_dir(out) as tmp:  # the next run's cleanup: the sleeper is gone now
        (tmp / "a").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "res"]


def test_a_temporary_of_a_reused_pid_is_stale(tmp_path):
    """A pid can be reused (containers restart from 1): a process that started after the temporary was last
    written cannot own it."""
    out = tmp_path / "res"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = tmp_path / f".res.{sleeper.pid}.0badf00d.tmp"
        old.mkdir()
        os.utime(old, (1_000_000_000, 1_000_000_000))  # written in 2001, long before the sleeper started
        if not os.path.exists(f"/proc/{sleeper.pid}/stat"):
            pytest.skip("no /proc here: start times are unknown")
        assert remove_stale_temps(out) == [old]
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_artifacts_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "res") as tmp:
            (tmp / "report.json").write_text("{}")
        with atomic_file(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"onnx")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "res") == dir_mode
    assert _mode(tmp_path / "res" / "report.json") == file_mode
    assert _mode(tmp_path / "model.onnx") == file_mode


def test_exported_onnx_file_is_0644_under_umask_022(tmp_path, tiny_conv):
    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.spec import InputSpec

    old = os.umask(0o022)
    try:
        result = export_onnx(tiny_conv, (InputSpec("input", (1, 3, 8, 8)),), tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert _mode(result.path) == 0o644


def test_compress_result_folder_is_0755_and_its_files_0644_under_umask_022(tmp_path, tiny_state_dict, fixtures_dir):
    from repfx_deploy.pipeline.compress import compress

    out = tmp_path / "res"
    old = os.umask(0o022)
    try:
        compress(_compress_request(tmp_path, tiny_state_dict, fixtures_dir, out))
    finally:
        os.umask(old)
    assert _mode(out) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.toml", "recipe.toml", "res", "tiny.pt"]


def test_output_under_a_file_is_an_input_error_and_leaves_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        with atomic_dir(tmp_path / "afile" / "res"):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_folders_made_for_an_output_that_was_not_written_are_removed(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "new" / "deeper" / "res"):
            raise RuntimeError("failed before anything was written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_output_in_a_read_only_folder_is_an_input_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="permission denied"):
            with atomic_dir(ro / "res"):
                pass
    finally:
        ro.chmod(0o755)
