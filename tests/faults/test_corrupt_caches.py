"""Corrupt caches: a latency table is rebuilt with a warning; a tuning database is named, with ``--fresh-tuning``
to move it aside; neither is ever an internal error."""

from __future__ import annotations

import json
from pathlib import Path

import onnx_graphs
import pytest
from typer.testing import CliRunner

from repfx_deploy.cli.app import app
from repfx_deploy.compile import tvm_tune
from repfx_deploy.errors import TuningDatabaseError

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _strict_load(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# -- the latency lookup table ----------------------------------------------------------------------------------


@pytest.fixture
def conv_onnx(tmp_path, monkeypatch):
    from repfx_deploy.estimate import model

    monkeypatch.setenv("REPFX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model, "_TABLES", {})  # the per-process table cache would hide the file
    return onnx_graphs.save_conv_classifier(tmp_path / "conv.onnx")


def _estimate(onnx_path):
    return _invoke("estimate", onnx_path, "--target", "host", "--method", "lookup", "--threads", "1", "--json")


@pytest.mark.parametrize(
    ("corrupt", "warning"),
    [
        (lambda doc: "{ not json", "unreadable"),
        (lambda doc: json.dumps({**doc, "entries": {k: {"op": "Conv"} for k in doc["entries"]}}), "corrupt entries"),
        (lambda doc: json.dumps({**doc, "entries": {k: [1, 2] for k in doc["entries"]}}), "corrupt entries"),
        (
            lambda doc: json.dumps({**doc, "entries": {k: {**v, "min_ms": "fast"} for k, v in doc["entries"].items()}}),
            "corrupt",
        ),
        (lambda doc: json.dumps([doc]), "unknown format"),
    ],
)
def test_corrupt_latency_table_is_rebuilt_with_a_warning(conv_onnx, monkeypatch, corrupt, warning):
    from repfx_deploy.estimate import model

    first = _estimate(conv_onnx)
    assert first.exit_code == 0, first.output
    (table,) = (Path(conv_onnx).parent / "cache" / "latency-lut").glob("*.json")
    doc = json.loads(table.read_text())
    table.write_text(corrupt(doc))
    monkeypatch.setattr(model, "_TABLES", {})
    again = _estimate(conv_onnx)
    assert again.exit_code == 0, again.output  # a KeyError (exit 3) before
    assert warning in again.stderr and table.name in again.stderr.replace("\n", "")
    rebuilt = _strict_load(table.read_text())
    assert set(rebuilt["entries"]) == set(doc["entries"])
    assert all(isinstance(e["min_ms"], float) for e in rebuilt["entries"].values())


# -- the tuning database ---------------------------------------------------------------------------------------


def test_corrupt_choices_file_is_named_with_the_fix(tmp_path):
    (tmp_path / tvm_tune.CHOICES_FILE).write_text('{"abc": {"choice": "default"')  # a write cut short
    with pytest.raises(TuningDatabaseError) as err:
        tvm_tune.read_choices(tmp_path)
    assert str(tmp_path) in err.value.problem and tvm_tune.CHOICES_FILE in err.value.problem
    assert "--fresh-tuning" in err.value.fix


def test_choices_of_the_wrong_shape_are_corrupt_too(tmp_path):
    (tmp_path / tvm_tune.CHOICES_FILE).write_text('{"abc": "default"}')
    with pytest.raises(TuningDatabaseError, match="not a table of per-kernel entries"):
        tvm_tune.read_choices(tmp_path)


def test_fresh_tuning_moves_a_corrupt_database_aside_and_starts_a_new_one(tmp_path, caplog):
    db = tmp_path / "abc123"
    db.mkdir()
    (db / tvm_tune.CHOICES_FILE).write_text("garbage")
    with tvm_tune.fresh_tuning():
        assert tvm_tune.read_choices(db) == {}
    (aside,) = tmp_path.glob("abc123.corrupt-*")
    assert (aside / tvm_tune.CHOICES_FILE).read_text() == "garbage"  # kept, for whoever wants to look
    assert db.is_dir() and not any(db.iterdir())
    assert "moved it to" in caplog.text
    with pytest.raises(TuningDatabaseError):  # outside the block the old behaviour holds
        (db / tvm_tune.CHOICES_FILE).write_text("garbage")
        tvm_tune.read_choices(db)


def test_healthy_database_is_left_alone_by_fresh_tuning(tmp_path):
    (tmp_path / tvm_tune.CHOICES_FILE).write_text('{"k": {"choice": "default"}}\n')
    with tvm_tune.fresh_tuning():
        assert tvm_tune.read_choices(tmp_path) == {"k": {"choice": "default"}}
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.corrupt-*"))


@pytest.mark.tvm
def test_corrupt_record_file_is_named_with_its_line(tmp_path):
    (tmp_path / tvm_tune.WORKLOAD_FILE).write_text("")
    (tmp_path / tvm_tune.RECORD_FILE).write_text('[0, ["ok"]]\n[1, {"truncated": \n')
    with pytest.raises(TuningDatabaseError, match=rf"{tvm_tune.RECORD_FILE} line 2"):
        tvm_tune.open_database(tmp_path)


def _host_db(monkeypatch, tmp_path) -> Path:
    """Where ``compile --target host --threads 1`` keeps its tuning database, under a private root."""
    from repfx_deploy.compile.host import TUNING_DB_ENV, default_tuning_db
    from repfx_deploy.targets import get_profile, resolve_tvm_target

    monkeypatch.setenv(TUNING_DB_ENV, str(tmp_path / "tuning"))
    return default_tuning_db(resolve_tvm_target(get_profile("host"), 1))


@pytest.mark.tvm
def test_compile_with_corrupt_database_names_it_and_fresh_tuning_recovers(tmp_path, monkeypatch):
    onnx_path = onnx_graphs.save_conv_classifier(tmp_path / "conv.onnx")
    db = _host_db(monkeypatch, tmp_path)
    db.mkdir(parents=True)
    (db / tvm_tune.WORKLOAD_FILE).write_text('["abc", {"truncated": \n')  # a kill mid-append
    (db / tvm_tune.RECORD_FILE).write_text("")
    args = ["compile", onnx_path, "--target", "host", "--threads", "1", "-o", tmp_path / "art", "--json"]
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "TuningDatabaseError"
    assert str(db) in error["problem"] and f"{tvm_tune.WORKLOAD_FILE} line 1" in error["problem"]
    assert "--fresh-tuning" in error["fix"] and not (tmp_path / "art").exists()

    result = _invoke(*args, "--fresh-tuning")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "art" / "model.so").exists()
    (aside,) = db.parent.glob(f"{db.name}.corrupt-*")
    assert "truncated" in (aside / tvm_tune.WORKLOAD_FILE).read_text()
    assert "moved it to" in result.stderr.replace("\n", " ")
