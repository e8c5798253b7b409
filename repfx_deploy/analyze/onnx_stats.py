"""Parameters, size and MACs of an ONNX model, from its initializers and inferred shapes.

Counts the ops that carry nearly all the arithmetic in vision and transformer models: Conv, ConvTranspose,
Gemm, MatMul (which covers attention's QK^T and AV products). Other ops are reported with zero MACs.
"""

from __future__ import annotations

import math
from pathlib import Path

from repfx_deploy.analyze.torch_stats import LayerStats, ModelStats

_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}
_DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


def _shapes(model) -> dict[str, list[int]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = dims
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _node_macs(node, shapes: dict[str, list[int]]) -> int:
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and len(node.input) >= 2:
        w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
        if not w or not y:
            return 0
        if op == "Conv":  # each output element: cin/group x kernel MACs (w is cout, cin/group, k...)
            return math.prod(y) * math.prod(w[1:])
        x = shapes.get(node.input[0])  # each input element feeds cout/group x kernel outputs
        return math.prod(x) * math.prod(w[1:]) if x else 0
    if op == "Gemm":
        a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not y:
            return 0
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
        return math.prod(y) * k
    if op == "MatMul":
        a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not y:
            return 0
        return math.prod(y) * a[-1]
    return 0


def onnx_stats(path: Path) -> ModelStats:
    """Stats for the ONNX file at ``path`` (shape inference runs on a copy in memory)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = _shapes(model)
    params = sum(math.prod(i.dims) for i in model.graph.initializer)
    size_bytes = sum(math.prod(i.dims) * _DTYPE_BYTES.get(i.data_type, 4) for i in model.graph.initializer)
    layers = []
    for i, node in enumerate(model.graph.node):
        macs = _node_macs(node, shapes)
        if macs:
            layers.append(LayerStats(name=node.name or f"{node.op_type}_{i}", kind=node.op_type, macs=macs, params=0))
    initializers = {i.name for i in model.graph.initializer}

    def describe(values) -> tuple[dict, ...]:
        return tuple(
            {
                "name": v.name,
                "shape": [
                    d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in v.type.tensor_type.shape.dim
                ],
                "dtype": _DTYPE_NAMES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
            }
            for v in values
            if v.name not in initializers
        )

    return ModelStats(
        params=params,
        size_bytes=size_bytes,
        macs=sum(layer.macs for layer in layers),
        layers=tuple(layers),
        inputs=describe(model.graph.input),
        outputs=describe(model.graph.output),
    )
