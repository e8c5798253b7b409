import dataclasses

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from repfx_deploy.estimate.analytic import LayerCost, layer_costs, layer_latency_ms
from repfx_deploy.estimate.model import prepare_onnx
from repfx_deploy.targets import EstimatorParams

PARAMS = EstimatorParams(conv_gmacs=10, depthwise_gmacs=2, pointwise_gmacs=10, gemm_gmacs=5, bandwidth_gbs=10, overhead_us=20)


def test_double_macs_costs_more_when_compute_bound():
    one = LayerCost("a", "Conv", "conv", macs=10_000_000, bytes_moved=1000)
    two = dataclasses.replace(one, macs=20_000_000)
    assert layer_latency_ms(two, PARAMS) > layer_latency_ms(one, PARAMS) * 1.5


def test_overhead_dominates_tiny_ops():
    tiny = LayerCost("a", "Relu", "other", macs=0, bytes_moved=64)
    assert abs(layer_latency_ms(tiny, PARAMS) - 0.020) < 0.001


def test_memory_bound_layer_costs_its_bytes():
    gemv = LayerCost("fc", "Gemm", "gemm", macs=1_000_000, bytes_moved=40_000_000)
    assert layer_latency_ms(gemv, PARAMS) > 4.0  # 40 MB at 10 GB/s, more than its 0.2 ms of compute


def _dw_block():
    """Depthwise 3x3 -> Relu -> pointwise 1x1 -> Relu -> GlobalAveragePool -> Flatten -> MatMul."""
    rng = np.random.default_rng(0)
    w = {"dw": (8, 1, 3, 3), "pw": (16, 8, 1, 1), "fc": (16, 4)}
    nodes = [
        helper.make_node("Conv", ["input", "dw"], ["a"], group=8, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "pw"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["d"]),
        helper.make_node("GlobalAveragePool", ["d"], ["e"]),
        helper.make_node("Flatten", ["e"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "dw_block", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in w.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_layers_are_classified_and_elementwise_ops_fuse():
    model, _ = prepare_onnx(_dw_block(), ())
    costs = layer_costs(model)
    assert [c.op_class for c in costs if c.op_type in ("Conv", "MatMul")] == ["depthwise", "pointwise", "gemm"]
    assert [c for c in costs if c.op_type == "Conv"][0].macs == 8 * 16 * 16 * 9
    relus = [c for c in costs if c.op_type == "Relu"]
    assert len(relus) == 2 and all(c.fused_into for c in relus)
    assert all(layer_latency_ms(c, PARAMS) == 0 for c in relus)
    assert [c.op_class for c in costs if c.op_type == "Flatten"] == ["view"]
    assert not any(c.fused_into for c in layer_costs(model, fuse_elementwise=False))
