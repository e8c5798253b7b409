"""End to end: compress a tiny model into a result folder, and the failure modes around it."""

import dataclasses
import json

import numpy as np
import pytest

from repfx_deploy.errors import CompileError, OutputExistsError
from repfx_deploy.ingest.loader import LoadOptions
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.pipeline.compress import CompressRequest, compress
from repfx_deploy.recipe import load_recipe

FAST = TimingConfig(warmup=2, repeats=5, min_time_s=0.0, remeasure=0)

pytestmark = pytest.mark.tvm


@pytest.fixture
def tiny_data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 4, 12))
    return path


def _recipe(tmp_path, data):
    path = tmp_path / "recipe.toml"
    path.write_text(f'''
input_shape = "1,3,8,8"
[data]
calibration = "{data}"
eval = "{data}"
calibration_samples = 8
[data.preprocess]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
layout = "NCHW"
''')
    return load_recipe(path)


def _request(tmp_path, tiny_state_dict, fixtures_dir, data, **kw):
    return CompressRequest(
        model_path=tiny_state_dict,
        out_dir=tmp_path / "out",
        recipe=_recipe(tmp_path, data),
        load=LoadOptions(arch="tiny_models:TinyConvNet", python_path=(fixtures_dir,)),
        timing=FAST,
        **kw,
    )


def test_compress_writes_verified_artifacts_and_report(tmp_path, tiny_state_dict, fixtures_dir, tiny_data):
    report = compress(_request(tmp_path, tiny_state_dict, fixtures_dir, tiny_data))
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "tvm", "report.json", "report.md", "recipe.toml"}
    assert (out / "tvm" / "model.so").exists()
    text = (out / "report.json").read_text()
    assert ".tmp" not in text and ".tmp" not in (out / "tvm" / "manifest.json").read_text()  # paths name the final folder
    on_disk = json.loads(text)
    assert on_disk["status"] == "ok"
    for side in ("baseline", "compressed"):
        summary = on_disk[side]
        assert summary["params"] > 0 and summary["macs"] > 0 and summary["size_bytes"] > 0
        assert set(summary["latency_ms"]) == {"torch", "onnxruntime", "tvm"}
        assert all(v > 0 for v in summary["latency_ms"].values())
        assert 0.0 <= summary["accuracy"] <= 1.0
    assert report["compressed"]["agreement"] == 1.0
    pairs = {(v["reference"], v["candidate"]): v for v in report["verification"]}
    assert set(pairs) == {("torch", "onnxruntime"), ("onnxruntime", "tvm"), ("torch", "tvm")}
    assert all(v["max_abs_error"] < 1e-4 for v in pairs.values())
    assert "Before and after" in (out / "report.md").read_text()
    replay = load_recipe(out / "recipe.toml")
    assert replay.input_specs[0].shape == (1, 3, 8, 8) and replay.arch == "tiny_models:TinyConvNet"


def test_compress_refuses_existing_output_without_force(tmp_path, tiny_state_dict, fixtures_dir, tiny_data):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        compress(_request(tmp_path, tiny_state_dict, fixtures_dir, tiny_data))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_compress_keeps_onnx_and_report_when_tvm_cannot_compile(tmp_path, tiny_state_dict, fixtures_dir, tiny_data, monkeypatch):
    import repfx_deploy.compile.tvm_build as tvm_build

    def refuse(*args, **kwargs):
        raise CompileError("TVM's ONNX importer has no converter for operator FancyOp.", "Replace FancyOp.")

    monkeypatch.setattr(tvm_build, "compile_onnx", refuse)
    with pytest.raises(CompileError, match="ONNX artifact and a report were kept"):
        compress(_request(tmp_path, tiny_state_dict, fixtures_dir, tiny_data))
    out = tmp_path / "out"
    assert (out / "model.onnx").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed at compile" and "FancyOp" in report["error"]


def test_compress_leaves_nothing_when_it_crashes_midway(tmp_path, tiny_state_dict, fixtures_dir, tiny_data, monkeypatch):
    import repfx_deploy.pipeline.compress as pipeline

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pipeline, "write_report", crash, raising=False)
    monkeypatch.setattr("repfx_deploy.report.writer.write_report", crash)
    with pytest.raises(OSError):
        compress(_request(tmp_path, tiny_state_dict, fixtures_dir, tiny_data))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_compress_measures_fidelity_on_random_inputs_when_no_data_given(tmp_path, tiny_state_dict, fixtures_dir):
    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text('input_shape = "1,3,8,8"\n')
    request = CompressRequest(
        model_path=tiny_state_dict, out_dir=tmp_path / "out", recipe=load_recipe(recipe_path),
        load=LoadOptions(arch="tiny_models:TinyConvNet", python_path=(fixtures_dir,)), timing=FAST,
    )
    report = compress(request)
    fid = report["compressed"]["fidelity"]
    assert fid["data"].startswith("random inputs") and fid["cosine"] > 0.9999
    assert report["compressed"]["accuracy"] is None
    assert any("random inputs" in n for n in report["notes"])


def test_not_faster_warnings_name_runtime_when_compressed_is_slower():
    from repfx_deploy.pipeline.compress import _not_faster_warnings

    before = {"onnxruntime": {"latency_ms": 1.0}, "tvm": {"latency_ms": 1.0}}
    after = {"onnxruntime": {"latency_ms": 0.5}, "tvm": {"latency_ms": 1.01}}
    warnings = _not_faster_warnings(before, after)
    assert len(warnings) == 1 and "tvm" in warnings[0] and "not faster" in warnings[0]


def test_compress_outputs_name_paths_relative_to_the_folder_never_the_temporary_one(tmp_path, tiny_state_dict, fixtures_dir, tiny_data):
    request = _request(tmp_path, tiny_state_dict, fixtures_dir, tiny_data)
    compress(request)
    out = tmp_path / "out"
    texts = {p: p.read_text() for p in out.rglob("*") if p.suffix in (".json", ".md", ".toml")}
    assert out / "tvm" / "manifest.json" in texts and out / "report.json" in texts
    for path, text in texts.items():
        assert ".tmp" not in text, path  # the atomic_dir sibling it was assembled in
        assert str(out) not in text and str(out.resolve()) not in text, path  # nor where the folder is now
    report = json.loads(texts[out / "report.json"])
    assert report["artifacts"]["onnx"] == "model.onnx" and report["artifacts"]["tvm_manifest"] == "tvm/manifest.json"
    assert all((out / p).exists() for p in report["artifacts"].values() if p)
    assert report["export"]["path"] == "model.onnx" and report["compile"]["library_path"] == "tvm/model.so"
    manifest = json.loads(texts[out / "tvm" / "manifest.json"])
    assert (out / "tvm" / manifest["library"]).exists() and manifest["source_onnx"]["file"] == "model.onnx"


def test_compress_for_a_foreign_target_estimates_latency_with_its_error_in_json_and_markdown(tmp_path, tiny_state_dict, fixtures_dir, tiny_data):
    request = _request(tmp_path, tiny_state_dict, fixtures_dir, tiny_data)
    report = compress(dataclasses.replace(request, recipe=request.recipe.with_overrides(target="pixel1")))
    for side in ("baseline", "compressed"):
        (entry,) = report[side]["latency"].values()
        assert entry["source"] == "estimated" and entry["error_pct"] == 14.4 and entry["latency_ms"] > 0
        assert report[side]["latency_ms"] == {"tvm": entry["latency_ms"]}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| latency tvm (ms, estimated, ±14.4 %) |" in md and "Estimated, not measured" in md


def test_not_faster_warning_phrases_the_ratio_as_slower_never_a_fraction_faster():
    from repfx_deploy.pipeline.compress import _not_faster_warnings

    (warning,) = _not_faster_warnings({"tvm": {"latency_ms": 1.0}}, {"tvm": {"latency_ms": 2.9}})
    assert "2.90x slower" in warning and "0.34x" not in warning
