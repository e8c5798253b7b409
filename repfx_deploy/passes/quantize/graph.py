"""Capture a model with ``torch.export`` and place fake quantizers where ONNX Runtime can fuse them to int8 kernels.

ONNX Runtime turns ``DQ -> Conv/Gemm/MatMul/Add -> Q`` into ``QLinearConv``/``QGemm``/``QLinearMatMul``/
``QLinearAdd``; without the ``Q`` on the output the op stays float. So each quantized layer gets:

- its weight quantized per channel (a ``WeightQuant`` that owns the weight);
- its input quantized: the producer's quantizer when the input already comes from one, a mirror of it (same
  scale) when only value-preserving ops (reshape, transpose, slice, zero pad, max-pool) lie between, else a new
  calibrated quantizer shared by every quantized consumer of that tensor;
- its output quantized, except a graph output (logits stay float). A ReLU that is the output's only user is
  folded into the quantizer (range starting at 0), as ONNX Runtime's quantizer removes it.

With ``quantize_add``, an ``add`` of two activations one of which is quantized gets quantized inputs and output,
so residual connections run as ``QLinearAdd`` instead of dequantize -> add -> quantize.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.fx as fx
import torch.nn as nn

from repfx_deploy.errors import PassError
from repfx_deploy.passes.quantize.fakequant import ActQuant, State, WeightQuant
from repfx_deploy.passes.quantize.fold import equalize, fetch, fold_batchnorm

aten = torch.ops.aten
LAYER_OPS = {aten.conv2d.default: "conv", aten.conv1d.default: "conv", aten.linear.default: "linear"}
ADD_OPS = (aten.add.Tensor, aten.add_.Tensor)
RELU_OPS = (aten.relu.default, aten.relu_.default)
# ops whose output values are a subset of their input values: a quantized input stays on its grid
VALUE_PRESERVING = {
    aten.view.default,
    aten.reshape.default,
    aten.transpose.int,
    aten.permute.default,
    aten.flatten.using_ints,
    aten.contiguous.default,
    aten.clone.default,
    aten.dropout.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.squeeze.dim,
    aten.unsqueeze.default,
    aten.unflatten.int,
    aten.max_pool2d.default,
    aten.pad.default,
    aten.expand.default,
}


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer: its name (the weight's path without ``.weight``), op kind, bits, and quantizers."""

    name: str
    kind: str
    bits: int | str
    weight_quant: str | None
    weight_numel: int
    out_channels: int
    out_quant: str | None = None  # the quantizer on the layer's output (its input is the layer's output)
    bias: str | None = None  # the bias tensor's attribute path, for bias correction
    node: str = ""  # the layer op's node name in the captured graph (keys its cached float output mean)


class QuantizedModel(nn.Module):
    """A captured graph with fake quantizers. Its graph was captured in eval mode, so ``train()`` only records the
    flag; the pass sets quantizer states itself."""

    def __init__(self, graph: fx.GraphModule, layers: tuple[LayerInfo, ...]) -> None:
        super().__init__()
        # not named ``graph``: torch.export rebuilds the model as a GraphModule, whose ``graph`` is taken
        self.net = graph
        self.layers = layers

    def forward(self, *args):
        return self.net(*args)

    def train(self, mode: bool = True) -> QuantizedModel:
        self.training = mode
        return self

    def act_quants(self) -> dict[str, ActQuant]:
        return {n: m for n, m in self.net.named_modules() if isinstance(m, ActQuant)}

    def weight_quants(self) -> dict[str, WeightQuant]:
        return {n: m for n, m in self.net.named_modules() if isinstance(m, WeightQuant)}

    def set_state(self, acts: State | None = None, weights: State | None = None) -> None:
        for a in self.act_quants().values():
            if acts is not None:
                a.state = acts
        for w in self.weight_quants().values():
            if weights is not None:
                w.state = weights

    def freeze(self) -> None:
        """Bake the current scales into the graph: deployment state, what export writes as QDQ."""
        acts = self.act_quants()
        for a in sorted(acts.values(), key=lambda q: q.source is not None):  # sources before their mirrors
            a.freeze()
        for w in self.weight_quants().values():
            w.freeze()


def capture(model: nn.Module, example: tuple[torch.Tensor, ...], *, dynamic_batch: bool) -> fx.GraphModule:
    """``torch.export`` graph of (a copy of) ``model`` in eval mode; batch dimension dynamic when asked and possible."""
    model = copy.deepcopy(model).eval()
    shapes = tuple({0: torch.export.Dim.AUTO} for _ in example) if dynamic_batch else None
    return torch.export.export(model, example, dynamic_shapes=shapes).module()


def prepare_graph(gm: fx.GraphModule, *, cle: bool) -> int:
    """The rewrites that come before quantizers, in place: fold BatchNorm, then (``cle``) equalize; returns the
    BatchNorms folded. Float-exact up to rounding, and independent of any layer's bits."""
    folded = fold_batchnorm(gm)
    if cle:
        equalize(gm)
        gm.recompile()
    return folded


def _weight_node(node: fx.Node) -> fx.Node | None:
    """The ``get_attr`` weight of a quantizable layer node, or None (not a layer, or a computed weight)."""
    if node.op != "call_function" or node.target not in LAYER_OPS:
        return None
    w_node = node.args[1]
    return w_node if isinstance(w_node, fx.Node) and w_node.op == "get_attr" else None


def _module_name(node: fx.Node) -> str:
    """The qualified name of the submodule a ``call_module`` node calls."""
    assert node.op == "call_module", f"{node.name} is a {node.op} node, not call_module"
    return cast(str, node.target)  # a call_module node's target is the submodule's qualified name


def _called_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    """The submodule of ``gm`` that the ``call_module`` node ``node`` calls."""
    name = _module_name(node)
    try:
        return gm.get_submodule(name)
    except AttributeError as e:
        raise PassError(
            f"quantize: graph node {node.name} calls submodule {name!r}, which the graph module does not hold.",
            "Report this model.",
        ) from e


def _act_quant(gm: fx.GraphModule, node: fx.Node) -> ActQuant | None:
    """The activation quantizer ``node`` calls, or None (``node`` calls no module, or another one)."""
    if node.op != "call_module":
        return None
    module = _called_module(gm, node)
    return module if isinstance(module, ActQuant) else None


def _is_residual_add(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in ADD_OPS or len(node.args) != 2:
        return False
    # broadcasting a parameter (e.g. position embeddings) is not a residual add
    return all(isinstance(v, fx.Node) and v.op != "get_attr" and _same_shape(v, node) for v in node.args)


def layer_weights(gm: fx.GraphModule) -> list[tuple[str, str, torch.Tensor]]:
    """(layer name, weight attribute path, weight) of every quantizable layer, in graph order (a weight shared by
    two layers appears once per layer)."""
    out = []
    for node in gm.graph.nodes:
        w_node = _weight_node(node)
        if w_node is not None:
            target = str(w_node.target)
            out.append((_layer_name(target), target, _fetch_weight(gm, target)))
    return out


def layer_nodes(gm: fx.GraphModule) -> list[str]:
    """Names of the quantizable layers' op nodes (each layer's output is what bias correction measures)."""
    return [node.name for node in gm.graph.nodes if _weight_node(node) is not None]


def observed_nodes(gm: fx.GraphModule, *, quantize_add: bool) -> list[str]:
    """Names of the nodes of ``gm`` (folded, no quantizers yet) whose values some activation quantizer observes,
    whatever bits each layer gets: every quantized layer's or add's input and output, and the ReLU folded into an
    output quantizer (it observes the ReLU's value). ``quantize_graph`` keys each quantizer by one of these."""
    keys: dict[str, None] = {}

    def tensor(v: object) -> bool:
        val = _val(v) if isinstance(v, fx.Node) else None
        return isinstance(val, torch.Tensor) and val.is_floating_point()

    for node in gm.graph.nodes:
        if _weight_node(node) is not None:
            inputs = node.args[:1]
        elif quantize_add and _is_residual_add(node):
            inputs = node.args[:2]
        else:
            continue
        users = list(node.users)
        relu = users[0] if len(users) == 1 and users[0].op == "call_function" and users[0].target in RELU_OPS else None
        for v in (*inputs, node, relu):
            if isinstance(v, fx.Node) and tensor(v):
                keys[v.name] = None
    return list(keys)


def quantize_graph(
    gm: fx.GraphModule,
    *,
    weight_bits: int,
    layer_bits: Mapping[str, int | str],
    method: str,
    percentile: float,
    weight_method: str,
    quantize_add: bool,
    scales: Mapping[tuple[str, int], torch.Tensor] | None = None,
) -> tuple[LayerInfo, ...]:
    """Insert quantizers into ``gm`` (already through ``prepare_graph``) in place; returns the layers found.

    A layer takes ``layer_bits[name]``, else ``weight_bits``; ``scales`` (``(name, bits)`` -> per-channel weight
    scales) saves recomputing them. Every activation quantizer gets ``key``: the name of the node whose value it
    observes (see ``observed_nodes``), so calibrated ranges can come from statistics measured once.
    """
    graph = gm.graph
    counter = {"a": 0, "w": 0}
    quantized_of: dict[fx.Node, fx.Node] = {}

    def add_aq(
        after: fx.Node, *, relu: bool = False, source: ActQuant | None = None, key: str | None = None
    ) -> fx.Node:
        name = f"act_quant_{counter['a']}"
        counter["a"] += 1
        gm.add_submodule(
            name, ActQuant(relu=relu, method=method, percentile=percentile, source=source, key=key or after.name)
        )
        with graph.inserting_after(after):
            return graph.call_module(name, (after,))

    def aq_source(value: fx.node.Argument) -> ActQuant | None:
        """The quantizer ``value`` comes from, through value-preserving ops only."""
        while isinstance(value, fx.Node):
            q = _act_quant(gm, value)
            if q is not None:
                return q
            if value.op == "call_function" and value.target in VALUE_PRESERVING and value.args:
                value = value.args[0]
                continue
            return None
        return None

    def quantized_input(node: fx.Node) -> fx.Node:
        if _act_quant(gm, node) is not None:
            return node
        if node not in quantized_of:
            source = aq_source(node)
            quantized_of[node] = add_aq(node, source=source)
        return quantized_of[node]

    def quantize_output(node: fx.Node) -> str | None:
        users = list(node.users)
        if any(u.op == "output" for u in users):
            return None
        if len(users) == 1 and users[0].op == "call_function" and users[0].target in RELU_OPS:
            relu = users[0]
            q = add_aq(node, relu=True, key=relu.name)  # it computes, and so observes, the ReLU's value
            relu.replace_all_uses_with(q)
            graph.erase_node(relu)
        else:
            q = add_aq(node)
            node.replace_all_uses_with(q, delete_user_cb=lambda u: u is not q)
        quantized_of[node] = q
        return _module_name(q)

    layers: list[LayerInfo] = []
    for node in list(graph.nodes):
        w_node = _weight_node(node)
        if w_node is None:
            continue  # not a layer, or a computed weight: left in float
        target = str(w_node.target)
        name = _layer_name(target)
        bits = layer_bits.get(name, weight_bits)
        weight = _fetch_weight(gm, target)
        if bits == "float":
            layers.append(
                LayerInfo(name, LAYER_OPS[node.target], "float", None, weight.numel(), weight.shape[0], node=node.name)
            )
            continue
        wq_name = f"weight_quant_{counter['w']}"
        counter["w"] += 1
        scale = scales.get((name, int(bits))) if scales is not None else None
        gm.add_submodule(wq_name, WeightQuant(weight.detach(), bits=int(bits), method=weight_method, scale=scale))
        with graph.inserting_before(node):
            wq_node = graph.call_module(wq_name, ())
        node.replace_input_with(w_node, wq_node)
        if not w_node.users:
            graph.erase_node(w_node)
            _drop_attr(gm, target)
        x = node.args[0]
        node.replace_input_with(x, quantized_input(x))
        out_quant = quantize_output(node)
        bias = (
            node.args[2]
            if len(node.args) > 2 and isinstance(node.args[2], fx.Node) and node.args[2].op == "get_attr"
            else None
        )
        layers.append(
            LayerInfo(
                name,
                LAYER_OPS[node.target],
                int(bits),
                wq_name,
                weight.numel(),
                weight.shape[0],
                out_quant,
                str(bias.target) if bias else None,
                node=node.name,
            )
        )

    if quantize_add:
        for node in list(graph.nodes):
            if not _is_residual_add(node):
                continue
            a, b = node.args
            if aq_source(a) is None and aq_source(b) is None:
                continue
            for v in (a, b):
                node.replace_input_with(v, quantized_input(v))
            quantize_output(node)

    graph.lint()
    gm.recompile()
    return tuple(layers)


def _fetch_weight(gm: fx.GraphModule, target: str) -> torch.Tensor:
    return gm.get_parameter(target) if _is_param(gm, target) else fetch(gm, target)


def _val(node: fx.Node) -> object:
    """The example value recorded at capture; a quantizer inserted since has its input's."""
    while "val" not in node.meta and node.op == "call_module" and node.args:
        source = node.args[0]
        assert isinstance(source, fx.Node), f"{node.name} calls a quantizer on {source!r}, not on a graph value"
        node = source
    return node.meta.get("val")


def _shape(node: fx.Node) -> tuple[object, ...] | None:
    """The shape of ``node``'s recorded value (its sizes may be symbolic), or None when it has none."""
    shape = getattr(_val(node), "shape", None)
    return tuple(shape) if shape is not None else None


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    shape = _shape(a)
    return shape is not None and shape == _shape(b)


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _drop_attr(gm: fx.GraphModule, target: str) -> None:
    *path, leaf = target.split(".")
    module = gm.get_submodule(".".join(path)) if path else gm
    if leaf in module._parameters:
        del module._parameters[leaf]
    elif leaf in module._buffers:
        del module._buffers[leaf]


def _layer_name(target: str) -> str:
    for suffix in (".weight", "_weight"):
        if target.endswith(suffix):
            return target[: -len(suffix)]
    return target
