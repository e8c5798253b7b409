"""Kernel detection for ONNX Runtime: the layers ORT really executes, each extractable as a standalone model.

ORT rewrites a graph before running it (Conv+BN+ReLU fused into one conv, convolutions moved to its blocked
NCHWc layout with reorders at the edges, GELU/LayerNorm fused ...). A per-layer latency table must time those
kernels, not the exported graph's nodes, so the graph is optimised by ORT itself (``optimized_model_filepath``)
and the saved graph is split into one-node models. Their tensor shapes and the exact values each node sees come
from one run of the optimised graph with every intermediate tensor exposed as an output, which also works for
ORT's own ops that ONNX shape inference does not know. The optimised graph is specific to this CPU (NCHWc block
size), which is why the lookup table is keyed by CPU.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from repfx_deploy.errors import MeasureError
from repfx_deploy.estimate.signature import TensorDesc, node_signature
from repfx_deploy.measure.runtimes import session_options
from repfx_deploy.spec import InputSpec

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class OrtLayer:
    """One node of ORT's optimised graph: its name, op, signature and tensors."""

    index: int
    name: str
    op_type: str
    domain: str
    signature: str
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]

    @property
    def weight_bytes(self) -> int:
        """Bytes of the constant inputs (weights, biases) this layer reads."""
        return sum(
            int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize for t in self.inputs if t.constant
        )


@dataclass
class OrtGraph:
    """ORT's optimised graph, its layers, and every tensor value seen in one run (for standalone replays)."""

    model: onnx.ModelProto
    layers: list[OrtLayer]
    values: dict[str, np.ndarray]
    initializers: dict[str, onnx.TensorProto]

    def standalone(self, layer: OrtLayer) -> tuple[bytes, dict[str, np.ndarray]]:
        """A serialized one-node model running ``layer`` with its own weights, and the feed it ran on in-graph."""
        from onnx import helper

        node = self.model.graph.node[layer.index]
        graph_inputs, initializers, feed = [], [], {}
        for name in dict.fromkeys(n for n in node.input if n):  # a tensor can feed two inputs of one node
            if name in self.initializers:
                initializers.append(self.initializers[name])
                continue
            value = self.values[name]
            graph_inputs.append(
                helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            )
            feed[name] = value
        outputs = [
            helper.make_tensor_value_info(
                n, helper.np_dtype_to_tensor_dtype(self.values[n].dtype), self.values[n].shape
            )
            for n in node.output
            if n and n in self.values
        ]
        graph = helper.make_graph([node], f"layer_{layer.index}", graph_inputs, outputs, initializer=initializers)
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        return model.SerializeToString(), feed


def _desc(value: np.ndarray, constant: bool = False) -> TensorDesc:
    return TensorDesc(tuple(int(d) for d in value.shape), str(value.dtype), constant)


def _init_desc(init) -> TensorDesc:
    from onnx import helper

    return TensorDesc(
        tuple(int(d) for d in init.dims), str(np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))), True
    )


def ort_graph(model: onnx.ModelProto, specs: tuple[InputSpec, ...], threads: int, seed: int = 0) -> OrtGraph:
    """Optimise ``model`` with ORT (full level, ``threads`` threads) and describe the layers it will run.

    ``specs`` must give static shapes for every graph input. Raises ``MeasureError`` when ORT cannot load the
    model or the optimised graph holds control flow (If/Loop/Scan), which a per-layer table cannot time.
    """
    import onnx
    import onnxruntime as ort

    from repfx_deploy.data.tensors import random_inputs

    with tempfile.TemporaryDirectory(prefix="repfx-ort-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "optimized.onnx"
        onnx.save(model, str(src))
        opts = session_options(threads, optimize=True)
        opts.optimized_model_filepath = str(dst)
        try:
            ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            from repfx_deploy.diskfull import raise_if_disk_full

            raise_if_disk_full(e, Path(tmp))  # ORT writes the optimised model here
            raise MeasureError(
                f"ONNX Runtime cannot load the model: {e}",
                "Check it with `repfx-deploy inspect`, or use --method analytic.",
            ) from e
        optimized = onnx.load(str(dst))
    for node in optimized.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise MeasureError(
                f"The model holds control flow ({node.op_type}), which a per-layer lookup table cannot time.",
                "Use --method analytic, or export the model without data-dependent control flow.",
            )
    initializers = {i.name: i for i in optimized.graph.initializer}
    # One run with every tensor exposed gives shapes (ORT's contrib ops defeat ONNX shape inference) and the
    # exact inputs each node sees, so integer inputs (indices, shapes) replay correctly in a standalone model.
    probe = onnx.ModelProto()
    probe.CopyFrom(optimized)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    session = ort.InferenceSession(
        probe.SerializeToString(), session_options(threads, optimize=False), providers=["CPUExecutionProvider"]
    )
    feed = dict(zip([i.name for i in session.get_inputs()], random_inputs(specs, seed=seed)))
    names = [o.name for o in session.get_outputs()]
    values = dict(feed)
    values.update(zip(names, session.run(names, feed)))
    layers = []
    for index, node in enumerate(optimized.graph.node):
        ins = [_init_desc(initializers[n]) if n in initializers else _desc(values[n]) for n in node.input if n]
        outs = [_desc(values[n]) for n in node.output if n and n in values]
        layers.append(
            OrtLayer(
                index=index,
                name=node.name or f"{node.op_type}_{index}",
                op_type=node.op_type,
                domain=node.domain,
                signature=node_signature(node, ins, outs),
                inputs=tuple(ins),
                outputs=tuple(outs),
            )
        )
    return OrtGraph(model=optimized, layers=layers, values=values, initializers=initializers)
