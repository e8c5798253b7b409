"""The analytic latency model: per layer, max(compute time, memory time) plus a per-op overhead.

Works on the exported ONNX graph with inferred shapes, so it needs nothing from the device. Each node gets a
class, its MACs and the bytes it moves (every input, weights included, and every output):

- ``conv`` (dense, grouped), ``depthwise`` (groups == input channels), ``pointwise`` (1x1, one group),
  ``gemm`` (Gemm, MatMul): ``max(MACs / <class>_gmacs, bytes / bandwidth_gbs) + overhead_us``;
- ``view`` (Reshape, Flatten, Squeeze, ...): free, a runtime only relabels the buffer;
- ``other`` (elementwise, pooling, normalisation, softmax ...): ``bytes / bandwidth_gbs + overhead_us``.

With ``fuse_elementwise`` an elementwise op that directly follows a conv/gemm (or a chain of such fused ops)
whose output nothing else reads is folded into it and costs nothing more, as the runtimes' fusions do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from repfx_deploy.analyze.onnx_stats import _DTYPE_BYTES, _node_macs, _shapes

if TYPE_CHECKING:
    import onnx

    from repfx_deploy.targets import EstimatorParams

OpClass = Literal["conv", "depthwise", "pointwise", "gemm", "view", "other"]
_VIEW = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Dropout"}
_FUSIBLE = {
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Tanh",
    "Erf",
    "Gelu",
    "Mul",
    "Add",
    "Sub",
    "Div",
    "BatchNormalization",
}
_MAC_CLASSES = ("conv", "depthwise", "pointwise", "gemm")


@dataclass(frozen=True)
class LayerCost:
    """One node's class, MACs, bytes moved and (once costed) latency; ``fused_into`` names its producer."""

    name: str
    op_type: str
    op_class: OpClass
    macs: int
    bytes_moved: int
    fused_into: str = ""


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints)
    return default


def op_class(node, shapes: dict[str, list[int]]) -> OpClass:
    """The cost class of ``node`` given the graph's tensor shapes."""
    op = node.op_type
    if op in _VIEW:
        return "view"
    if op in ("Gemm", "MatMul"):
        return "gemm"
    if op == "ConvTranspose":
        return "conv"
    if op == "Conv":
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        group = _attr(node, "group", 1)
        if w and group > 1 and w[1] == 1:
            return "depthwise"
        if w and group == 1 and all(k == 1 for k in w[2:]):
            return "pointwise"
        return "conv"
    return "other"


def layer_costs(model: onnx.ModelProto, fuse_elementwise: bool = True) -> list[LayerCost]:
    """Class, MACs and bytes of every node of ``model`` (shapes must already be inferred)."""
    shapes = _shapes(model)
    dtypes = _dtypes(model)

    def nbytes(name: str) -> int:
        dims = shapes.get(name)
        return math.prod(dims) * _DTYPE_BYTES.get(dtypes.get(name, 1), 4) if dims else 0

    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    outputs = {o.name for o in model.graph.output}
    producer_of: dict[str, str] = {}  # tensor -> the MAC layer it belongs to, through fused ops
    costs = []
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        cls = op_class(node, shapes)
        moved = sum(nbytes(n) for n in node.input if n) + sum(nbytes(n) for n in node.output if n)
        fused_into = ""
        if fuse_elementwise and node.op_type in _FUSIBLE and node.input:
            source = next((producer_of[n] for n in node.input if n in producer_of), "")
            if source:
                fused_into = source
        costs.append(LayerCost(name, node.op_type, cls, _node_macs(node, shapes), moved, fused_into))
        owner = name if cls in _MAC_CLASSES else fused_into
        if owner:
            for out in node.output:
                if consumers.get(out, 0) == 1 and out not in outputs:
                    producer_of[out] = owner
    return costs


def _dtypes(model) -> dict[str, int]:
    out = {i.name: i.data_type for i in model.graph.initializer}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        out[vi.name] = vi.type.tensor_type.elem_type
    return out


def layer_latency_ms(cost: LayerCost, params: EstimatorParams) -> float:
    """Predicted latency of one layer under ``params`` (0 for views and fused ops)."""
    if cost.fused_into or cost.op_class == "view":
        return 0.0
    memory_s = cost.bytes_moved / (params.bandwidth_gbs * 1e9)
    compute_s = cost.macs / (getattr(params, f"{cost.op_class}_gmacs") * 1e9) if cost.op_class in _MAC_CLASSES else 0.0
    return (max(compute_s, memory_s) + params.overhead_us * 1e-6) * 1e3
