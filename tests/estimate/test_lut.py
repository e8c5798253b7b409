import json

import onnx_graphs
import pytest

from repfx_deploy.estimate import lut as lut_mod
from repfx_deploy.estimate.lut import LatencyTable, cold_weight_bytes, table_path
from repfx_deploy.estimate.model import prepare_onnx
from repfx_deploy.estimate.ort_layers import OrtLayer, ort_graph
from repfx_deploy.estimate.signature import TensorDesc
from repfx_deploy.measure.timing import TimingConfig

FAST = TimingConfig(warmup=1, repeats=3, min_time_s=0.0, max_repeats=3, remeasure=0)


@pytest.fixture
def graph():
    model, specs = prepare_onnx(onnx_graphs.conv_classifier(), ())
    return ort_graph(model, specs, threads=1)


def test_table_path_is_keyed_by_runtime_version_and_threads(tmp_path):
    a = table_path(1, "1.20.0", tmp_path)
    assert a.parent == tmp_path / "latency-lut" and a.name.startswith("onnxruntime-1.20.0-")
    assert table_path(1, "1.21.0", tmp_path) != a
    assert table_path(2, "1.20.0", tmp_path) != a


def test_second_lookup_measures_nothing_and_entries_record_runtime(tmp_path, graph):
    table = LatencyTable.open(1, tmp_path, timing=FAST)
    first = [table.latency_ms(graph, layer) for layer in graph.layers]
    assert table.measured == len({layer.signature for layer in graph.layers}) > 0
    table.save()
    doc = json.loads(table.path.read_text())
    entry = next(iter(doc["entries"].values()))
    assert entry["runtime"] == "onnxruntime" and entry["runtime_version"] == lut_mod.runtime_version()
    assert entry["threads"] == 1 and entry["median_ms"] > 0 and entry["repeats"] >= 3
    again = LatencyTable.open(1, tmp_path, timing=FAST)
    second = [again.latency_ms(graph, layer) for layer in graph.layers]
    assert again.measured == 0 and second == first


def test_other_runtime_version_starts_an_empty_table(tmp_path, graph, monkeypatch):
    table = LatencyTable.open(1, tmp_path, timing=FAST)
    for layer in graph.layers:
        table.latency_ms(graph, layer)
    table.save()
    monkeypatch.setattr(lut_mod, "runtime_version", lambda: "0.0.1-other")
    other = LatencyTable.open(1, tmp_path, timing=FAST)
    assert other.entries == {} and other.path != table.path


def test_ort_layers_are_the_fused_kernels(graph):
    ops = [layer.op_type for layer in graph.layers]
    assert "Relu" not in ops and ops.count("Conv") == 2  # ReLU runs inside ORT's fused conv
    assert all(layer.outputs for layer in graph.layers)
    model_bytes, feed = graph.standalone(graph.layers[0])
    assert model_bytes and all(v.shape for v in feed.values())


def _layer(weight_floats: int) -> OrtLayer:
    w = TensorDesc((weight_floats,), "float32", constant=True)
    return OrtLayer(0, "l", "Gemm", "", "sig", (TensorDesc((1, 4), "float32"), w), (TensorDesc((1, 4), "float32"),))


def test_cold_weights_only_when_the_model_outgrows_the_cache():
    small, big = _layer(100), _layer(1000)  # 400 and 4000 bytes
    assert small.weight_bytes == 400
    assert cold_weight_bytes([small, small], cache_bytes=1000) == [0, 0]  # everything stays in cache
    assert cold_weight_bytes([small, small, small], cache_bytes=1000) == [400, 400, 400]  # evicted by each other
    assert cold_weight_bytes([small, big], cache_bytes=1000) == [400, 0]  # the big one is cold standalone too
