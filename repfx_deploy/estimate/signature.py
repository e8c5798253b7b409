"""Layer signatures: what makes two layers cost the same on one runtime.

A signature is the op type and domain, the shape and dtype of every input (and whether it is a constant
weight), the output shapes, and the attributes. Names and weight values are left out: two layers that differ
only in those run the same kernel on the same amount of data, so one measurement serves both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class TensorDesc:
    """One tensor a layer reads or writes: shape, numpy dtype name, and whether it is a constant weight."""

    shape: tuple[int, ...]
    dtype: str
    constant: bool = False

    def to_list(self) -> list:
        return [list(self.shape), self.dtype, self.constant]


def _attribute_value(attr) -> object:
    """A JSON-ready value for an ONNX attribute (graphs are refused upstream; tensors hashed by content)."""
    import onnx

    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    if isinstance(value, onnx.TensorProto):
        return "tensor:" + hashlib.sha256(value.SerializeToString()).hexdigest()[:16]
    if isinstance(value, float):
        return round(value, 9)  # the same float written twice must hash the same
    return value


def node_signature(node, inputs: list[TensorDesc], outputs: list[TensorDesc]) -> str:
    """A stable 20-hex-digit key for ``node`` (an ``onnx.NodeProto``) with the given input/output tensors."""
    doc = {
        "op": node.op_type,
        "domain": node.domain or "ai.onnx",
        "inputs": [t.to_list() for t in inputs],
        "outputs": [t.to_list() for t in outputs],
        "attrs": sorted([a.name, _attribute_value(a)] for a in node.attribute),
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
