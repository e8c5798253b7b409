import onnx_graphs
import pytest

from repfx_deploy.errors import InputShapeError, TargetError
from repfx_deploy.estimate import estimate_latency
from repfx_deploy.estimate import lut as lut_mod
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 8, 8)),)


@pytest.fixture(autouse=True)
def fast_layer_timing(monkeypatch):
    monkeypatch.setattr(lut_mod, "LAYER_TIMING", TimingConfig(warmup=1, repeats=3, min_time_s=0.0, max_repeats=3, remeasure=0))
    from repfx_deploy.estimate import model

    model._TABLES.clear()
    yield
    model._TABLES.clear()


@pytest.fixture
def tiny_onnx(tmp_path):
    return onnx_graphs.save_conv_classifier(tmp_path / "conv.onnx")


def test_host_lookup_estimate_is_labeled_and_cached(tiny_onnx, tmp_path):
    first = estimate_latency(tiny_onnx, (), "host", threads=1, cache_root=tmp_path)
    assert first.is_estimate and first.method == "lookup table" and first.runtime.startswith("onnxruntime ")
    assert first.latency_ms > 0 and first.layers and first.layers_measured > 0
    assert first.accuracy and first.target == "host"
    assert abs(sum(layer.latency_ms for layer in first.layers) + first.overhead_ms - first.latency_ms) < 1e-9
    again = estimate_latency(tiny_onnx, (), "host", threads=1, cache_root=tmp_path)
    assert again.layers_measured == 0 and again.latency_ms == first.latency_ms


def test_analytic_estimate_for_a_device(tiny_conv):
    est = estimate_latency(tiny_conv, SPECS, "pixel1")
    d = est.to_dict()
    assert d["is_estimate"] is True and d["method"] == "analytic model" and d["latency_ms"] > 0
    assert d["target"] == "pixel1" and d["accuracy"] and d["layers"]


def test_wider_model_estimates_slower_on_every_device():
    narrow, wide = onnx_graphs.conv_classifier(width=8, res=32), onnx_graphs.conv_classifier(width=64, res=32)
    for target in ("pixel1", "rpi4", "jetson-nano", "rpi3-armv7", "host"):
        assert estimate_latency(wide, (), target, method="analytic model").latency_ms > \
            estimate_latency(narrow, (), target, method="analytic model").latency_ms, target


def test_lookup_table_refused_for_another_device(tiny_onnx):
    with pytest.raises(TargetError, match="cannot predict"):
        estimate_latency(tiny_onnx, (), "rpi4", method="lookup table")


def test_module_without_input_shapes_refused(tiny_conv):
    with pytest.raises(InputShapeError):
        estimate_latency(tiny_conv, (), "pixel1")


def test_profile_without_estimator_refused(tmp_path, tiny_onnx):
    from repfx_deploy.targets import load_profile_file

    path = tmp_path / "bare.toml"
    path.write_text('name = "bare"\ndescription = "d"\n[tvm_target]\nkind = "llvm"\n')
    with pytest.raises(TargetError, match="no \\[estimator\\]"):
        estimate_latency(tiny_onnx, (), load_profile_file(path))
