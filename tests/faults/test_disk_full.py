"""A full disk is reported as one, naming the folder and its free space, never as an unsupported operator, and
leaves nothing half-written (issue 19, item 8). ENOSPC is simulated by a write that raises it."""

import errno
import json
import os

import pytest
from typer.testing import CliRunner

from repfx_deploy.atomic import atomic_dir, atomic_file
from repfx_deploy.cli.app import app
from repfx_deploy.diskfull import is_disk_full, raise_if_disk_full
from repfx_deploy.errors import DiskFullError, ExportError
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 8, 8)),)


def _enospc(path="model.onnx"):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _full_disk_exporter(exporter, module, example, names, path, opset):
    raise _enospc(path)


def _wrapped_full_disk_exporter(exporter, module, example, names, path, opset):
    try:
        raise _enospc(path)
    except OSError as e:  # what torch.onnx does: its own error type, raised from the OSError
        raise RuntimeError("Failed to export the model to ONNX") from e


@pytest.mark.parametrize("exporter", [_full_disk_exporter, _wrapped_full_disk_exporter])
def test_export_on_a_full_disk_is_disk_full_not_an_operator(tmp_path, tiny_conv, monkeypatch, exporter):
    import repfx_deploy.lower.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "_run_exporter", exporter)
    with pytest.raises(DiskFullError) as info:
        onnx_export.export_onnx(tiny_conv, SPECS, tmp_path / "out" / "m.onnx")
    assert not isinstance(info.value, ExportError)
    assert str(tmp_path / "out") in info.value.problem and "free there" in info.value.problem
    assert "operator" not in str(info.value) and "Free some space" in info.value.fix
    assert list((tmp_path / "out").iterdir()) == []  # no half-written file, no temporary


def test_export_on_a_full_disk_when_saving_the_checked_model_is_disk_full(tmp_path, tiny_conv, monkeypatch):
    import onnx

    import repfx_deploy.lower.onnx_export as onnx_export

    def full(model, path, *a, **k):
        raise _enospc(path)

    monkeypatch.setattr(onnx, "save", full)
    with pytest.raises(DiskFullError):
        onnx_export.export_onnx(tiny_conv, SPECS, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_on_a_full_disk_reports_disk_full_in_json(tmp_path, tiny_state_dict, fixtures_dir, monkeypatch):
    import repfx_deploy.lower.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "_run_exporter", _wrapped_full_disk_exporter)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        app,
        ["export", str(tiny_state_dict), "--arch", "tiny_models:TinyConvNet", "--python-path", str(fixtures_dir),
         "--input-shape", "1,3,8,8", "-o", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "DiskFullError" and "disk is full" in error["problem"]
    assert not out.exists()


def test_atomic_dir_turns_a_full_disk_into_disk_full_and_keeps_nothing(tmp_path):
    out = tmp_path / "res"
    with pytest.raises(DiskFullError, match="free there"):
        with atomic_dir(out) as tmp:
            raise _enospc(tmp / "model.so")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_names_the_output_not_its_hidden_temporary(tmp_path):
    out = tmp_path / "res"
    with pytest.raises(DiskFullError) as caught:
        with atomic_dir(out) as tmp:
            (tmp / "baseline").mkdir()
            try:  # as the exporter reports a write inside the folder being assembled
                raise _enospc(tmp / "baseline" / "model.onnx")
            except OSError as e:
                raise_if_disk_full(e, tmp / "baseline")
    assert str(out / "baseline") in caught.value.problem
    assert ".tmp" not in caught.value.problem


def test_quota_exceeded_is_named_as_such(tmp_path):
    with pytest.raises(DiskFullError, match="quota"):
        with atomic_file(tmp_path / "m.onnx"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))


def test_disk_full_seen_in_the_text_of_a_library_error():
    """C++ libraries (protobuf, the linker) say it only in their message."""
    assert is_disk_full(RuntimeError(f"write failed: {os.strerror(errno.ENOSPC)}"))
    assert not is_disk_full(RuntimeError("Unsupported operator aten::foo"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_raise_if_disk_full_lets_other_errors_through(tmp_path):
    raise_if_disk_full(ValueError("not a disk problem"), tmp_path)  # returns: the caller handles it


def test_cli_oserror_on_a_full_disk_is_reported_as_disk_full(tmp_path, monkeypatch):
    """An ENOSPC that reaches the CLI outside any atomic writer is still named."""
    import repfx_deploy.targets as targets

    def full(*a, **k):
        raise _enospc(tmp_path / "x")

    monkeypatch.setattr(targets, "list_profiles", full)
    result = CliRunner().invoke(app, ["targets", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["type"] == "DiskFullError"


@pytest.mark.tvm
def test_tvm_build_on_a_full_disk_is_disk_full_not_a_build_failure(tmp_path, tiny_onnx, monkeypatch):
    import repfx_deploy.compile.tvm_build as tvm_build
    from repfx_deploy.compile import CompileConfig, compile_onnx, host_target
    from repfx_deploy.errors import CompileError

    def full(executable, out_dir, *a, **k):
        raise RuntimeError(f"linker: cannot write {out_dir}/model.so: {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(tvm_build, "export_artifact", full)
    out = tmp_path / "tvm"
    out.mkdir()
    db = tmp_path / "db"
    db.mkdir()
    with pytest.raises(DiskFullError) as info:
        compile_onnx(tiny_onnx, out, CompileConfig(target=host_target(threads=1), tuning_db=db))
    assert not isinstance(info.value, CompileError) and str(out) in info.value.problem
