"""Graph rewrites before quantization, on the ``torch.export`` graph: BatchNorm folding and cross-layer equalization.

Folding ``conv -> batch_norm`` (eval) into the conv is exact in float and leaves one weight to quantize per layer,
as deployment runtimes fold it anyway. Cross-layer equalization (Nagel et al. 2019) rescales output channel ``i``
of a conv by ``1/s_i`` and input channel ``i`` of the next conv by ``s_i`` across a ReLU (positively homogeneous),
so both weights' per-channel ranges become ``sqrt(r1 * r2)``; it helps per-tensor weight quantization most and is
off by default, since these weights are quantized per channel.
"""

from __future__ import annotations

import operator
from typing import cast

import torch
import torch.fx as fx
import torch.nn as nn

aten = torch.ops.aten
CONV_OPS = (aten.conv2d.default, aten.conv1d.default)
BN_OPS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)


def fetch(gm: fx.GraphModule, target: str) -> torch.Tensor:
    return operator.attrgetter(target)(gm)


def set_param(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    """Set (or create) the parameter at dotted path ``target``."""
    *path, leaf = target.split(".")
    module: nn.Module = gm
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value.detach().clone())
    else:
        if hasattr(module, leaf):
            delattr(module, leaf)
        module.register_parameter(leaf, nn.Parameter(value.detach().clone()))


def _attr_node(arg: fx.node.Argument) -> fx.Node | None:
    """``arg`` when it is a ``get_attr`` node (a tensor the graph module holds), else None."""
    return arg if isinstance(arg, fx.Node) and arg.op == "get_attr" else None


def _attr_path(node: fx.Node) -> str:
    """The dotted attribute path a ``get_attr`` node reads."""
    assert node.op == "get_attr", f"{node.name} is a {node.op} node, not get_attr"
    return cast(str, node.target)  # a get_attr node's target is the attribute's dotted path


def _tensor_arg(gm: fx.GraphModule, arg: fx.node.Argument) -> torch.Tensor | None:
    node = _attr_node(arg)
    return fetch(gm, _attr_path(node)) if node is not None else None


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every eval-mode BatchNorm that directly follows a conv (its only user) into that conv; returns how many."""
    graph = gm.graph
    folded = 0
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in BN_OPS:
            continue
        conv = bn.args[0]
        if not (
            isinstance(conv, fx.Node)
            and conv.op == "call_function"
            and conv.target in CONV_OPS
            and len(conv.users) == 1
        ):
            continue
        if bn.target == aten.batch_norm.default:
            _, g, b, mean, var, training, _, eps = bn.args[:8]
            if training:
                continue
        else:
            _, g, b, mean, var, _, eps = bn.args[:7]
        w_node = _attr_node(conv.args[1])
        weight = _tensor_arg(gm, w_node)
        mean_t, var_t = _tensor_arg(gm, mean), _tensor_arg(gm, var)
        if w_node is None or weight is None or mean_t is None or var_t is None or len(w_node.users) != 1:
            continue
        gamma = _tensor_arg(gm, g) if g is not None else torch.ones_like(mean_t)
        beta = _tensor_arg(gm, b) if b is not None else torch.zeros_like(mean_t)
        bias_node = conv.args[2] if len(conv.args) > 2 else None
        bias = _tensor_arg(gm, bias_node) if bias_node is not None else torch.zeros_like(mean_t)
        if gamma is None or beta is None or bias is None:
            continue
        with torch.no_grad():
            factor = gamma / torch.sqrt(var_t + eps)
            new_w = weight * factor.view(-1, *([1] * (weight.dim() - 1)))
            new_b = (bias - mean_t) * factor + beta
        w_path = _attr_path(w_node)
        set_param(gm, w_path, new_w)
        # a flat name: torch.export's re-tracing drops submodules left without parameters, so a new tensor must
        # not live under the conv's (soon weight-less) submodule
        bias_target = w_path.replace(".", "_") + "_folded_bias"
        set_param(gm, bias_target, new_b)
        with graph.inserting_before(conv):
            new_bias_node = graph.get_attr(bias_target)
        args = list(conv.args) + [None] * (3 - len(conv.args))
        args[2] = new_bias_node
        conv.args = tuple(args)
        out = bn
        if bn.target == aten._native_batch_norm_legit_no_training.default:  # returns a tuple; users take [0]
            for user in list(bn.users):
                user.replace_all_uses_with(conv)
                graph.erase_node(user)
        else:
            out.replace_all_uses_with(conv)
        graph.erase_node(bn)
        folded += 1
    graph.eliminate_dead_code()
    gm.recompile()
    return folded


def equalize(gm: fx.GraphModule, iterations: int = 3) -> int:
    """Cross-layer equalization of ``conv -> relu -> conv`` pairs (groups 1, the relu the only user each way);
    returns the number of pairs equalized."""
    # (first weight, second weight, first bias or None): the attribute paths of each pair's tensors
    pairs: list[tuple[str, str, str | None]] = []
    for relu in gm.graph.nodes:
        if relu.op != "call_function" or relu.target != aten.relu.default:
            continue
        first = relu.args[0]
        users = list(relu.users)
        if not (isinstance(first, fx.Node) and first.target in CONV_OPS and len(first.users) == 1 and len(users) == 1):
            continue
        second = users[0]
        if second.target not in CONV_OPS or second.args[0] is not relu or _groups(first) != 1 or _groups(second) != 1:
            continue
        w1_node, w2_node = _attr_node(first.args[1]), _attr_node(second.args[1])
        if w1_node is None or w2_node is None:
            continue
        b1_node = _attr_node(first.args[2]) if len(first.args) > 2 else None
        pairs.append((_attr_path(w1_node), _attr_path(w2_node), _attr_path(b1_node) if b1_node is not None else None))
    for _ in range(iterations):
        for w1_path, w2_path, b1_path in pairs:
            w1, w2 = fetch(gm, w1_path), fetch(gm, w2_path)
            with torch.no_grad():
                r1 = w1.abs().flatten(1).amax(1)
                r2 = w2.abs().transpose(0, 1).flatten(1).amax(1)
                s = torch.sqrt(r1 / r2.clamp_min(1e-12)).clamp(1e-3, 1e3)
                s = torch.where((r1 > 0) & (r2 > 0), s, torch.ones_like(s))
                set_param(gm, w1_path, w1 / s.view(-1, *([1] * (w1.dim() - 1))))
                set_param(gm, w2_path, w2 * s.view(1, -1, *([1] * (w2.dim() - 2))))
                if b1_path is not None:
                    set_param(gm, b1_path, fetch(gm, b1_path) / s)
    return len(pairs)


def _groups(conv: fx.Node) -> int:
    groups = conv.args[6] if len(conv.args) > 6 else conv.kwargs.get("groups", 1)
    # the conv schema's ``SymInt groups``: a plain int in a captured graph
    assert isinstance(groups, int | torch.SymInt), f"{conv.name}: groups is {groups!r}"
    return int(groups)
