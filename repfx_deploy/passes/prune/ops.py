"""The walk over the traced graph: one rule per kind of operation (see graph.py for the model)."""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, cast

from repfx_deploy.errors import PassError
from repfx_deploy.passes.prune import attention
from repfx_deploy.passes.prune.channels import (
    Classes,
    Cut,
    DependencyGraph,
    Layer,
    LiteralEdit,
    ParamRef,
    Tensor,
    matches,
)
from repfx_deploy.passes.prune.shape_ops import ShapeRules, _flat, _shape_args

if TYPE_CHECKING:
    import torch.fx as fx


def _names(*fns) -> set:
    return {f for f in fns if f is not None}


class Walker(ShapeRules):
    """Walks the nodes in order, giving each tensor a ``Tensor`` (tracked channel axis), ``ParamRef`` or None."""

    def __init__(self, gm: fx.GraphModule, modules: dict, ignore: tuple[str, ...]) -> None:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        self.gm, self.modules, self.ignore = gm, modules, ignore
        self.c = Classes()
        self.cuts: list[Cut] = []
        self.edits: list[LiteralEdit] = []
        self.layers: dict[str, Layer] = {}
        self.spaces: list[tuple[str, tuple[int, ...]]] = []
        self.pairs: list = []
        self.macs: list[dict] = []
        self.notes: list[str] = []
        self.env: dict[str, Any] = {}
        self.passthrough_modules = (
            nn.ReLU,
            nn.ReLU6,
            nn.GELU,
            nn.SiLU,
            nn.Sigmoid,
            nn.Tanh,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.LeakyReLU,
            nn.ELU,
            nn.Mish,
            nn.PReLU,
            nn.Dropout,
            nn.Dropout1d,
            nn.Dropout2d,
            nn.Identity,
            nn.Upsample,
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveMaxPool2d,
            nn.Softmax,
        )
        self.passthrough_fns = _names(
            F.relu,
            F.relu6,
            F.gelu,
            F.silu,
            F.sigmoid,
            F.tanh,
            F.hardswish,
            F.hardsigmoid,
            F.leaky_relu,
            F.elu,
            F.mish,
            F.dropout,
            F.max_pool2d,
            F.avg_pool2d,
            F.adaptive_avg_pool2d,
            F.adaptive_max_pool2d,
            F.max_pool1d,
            F.avg_pool1d,
            F.interpolate,
            F.softmax,
            F.log_softmax,
            torch.relu,
            torch.sigmoid,
            torch.tanh,
            torch.softmax,
            torch.nn.functional.dropout2d,
            torch.exp,
            torch.abs,
            torch.neg,
        )
        self.passthrough_methods = {
            "relu",
            "sigmoid",
            "tanh",
            "contiguous",
            "clone",
            "detach",
            "float",
            "to",
            "softmax",
            "exp",
            "abs",
            "neg",
            "relu_",
            "sigmoid_",
            "type_as",
            "sqrt",
            "rsqrt",
            "pow",
            "clamp",
            "clamp_min",
        }
        self.binary_fns = _names(
            operator.add,
            operator.sub,
            operator.mul,
            operator.truediv,
            operator.iadd,
            operator.imul,
            torch.add,
            torch.sub,
            torch.mul,
            torch.div,
            torch.maximum,
            torch.minimum,
        )
        self.binary_methods = {"add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_"}
        self.reduce_fns = _names(torch.mean, torch.sum, torch.amax, torch.amin)
        self.reduce_methods = {"mean", "sum", "amax", "amin", "std", "var"}

    # ------------------------------------------------------------------ helpers
    def result(self) -> DependencyGraph:
        return DependencyGraph(
            self.gm, self.c, self.cuts, self.edits, self.layers, self.spaces, self.pairs, self.macs, self.notes
        )

    @staticmethod
    def owner(node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.keys())[-1] if stack else ""

    def fail(self, node: fx.Node, reason: str) -> PassError:
        where = node.target if node.op == "call_module" else self.owner(node)
        layer = f"layer {where!r}" if where else "the top-level forward"
        what = node.target if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
        return PassError(
            f"Structured pruning cannot handle {layer} (operation {what!r}): {reason}.",
            f"Add {where or 'that layer'!r} to the prune pass's ignore list (it is then left whole), or rewrite it with "
            "standard layers.",
        )

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def shape_of(self, node: fx.Node, arg: fx.node.Argument) -> tuple[int, ...]:
        """The shape of ``arg`` (``node`` itself or one of its inputs), which the rule for ``node`` needs."""
        import torch.fx as fx

        shape = self.shape(arg) if isinstance(arg, fx.Node) else None
        if shape is None:
            raise self.fail(node, "shape propagation recorded no tensor shape where the rule needs one")
        return shape

    def value(self, a):
        import torch.fx as fx

        return self.env.get(a.name) if isinstance(a, fx.Node) else None

    def tensor_in(self, node: fx.Node, arg, axis: int, size: int) -> list[int]:
        """Elements of ``arg`` along ``axis`` (a consumer's input side); fresh pinned ones when untracked."""
        v = self.value(arg)
        shape = self.shape_of(node, arg)
        ax = axis % len(shape)
        if isinstance(v, Tensor):
            if v.axis != ax:
                raise self.fail(node, f"its input channels (dim {ax}) are not the tracked channel dim {v.axis}")
            return v.elems
        return self.c.new(size, pinned=True)

    def space(self, name: str, t: Tensor) -> Tensor:
        self.spaces.append((name, tuple(t.elems)))
        return t

    # ------------------------------------------------------------------ walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node.name] = None  # model inputs: never pruned (pinned where a consumer reads them)
            elif node.op == "get_attr":
                shape = self.shape(node)
                mod, _, name = node.target.rpartition(".")
                self.env[node.name] = ParamRef(mod, name, tuple(range(len(shape)))) if shape is not None else None
            elif node.op == "output":
                self.pin_all(node.args[0])
            elif node.op == "call_module":
                self.env[node.name] = self.call_module(node)
            else:
                self.env[node.name] = self.call(node)

    def pin_all(self, arg) -> None:
        import torch.fx as fx

        if isinstance(arg, (list, tuple)):
            for a in arg:
                self.pin_all(a)
        elif isinstance(arg, dict):
            for a in arg.values():
                self.pin_all(a)
        elif isinstance(arg, fx.Node):
            v = self.env.get(arg.name)
            for t in v if isinstance(v, list) else [v]:
                if isinstance(t, Tensor):
                    self.c.pin(t.elems)

    def pin_inputs(self, node: fx.Node) -> None:
        self.pin_all(list(node.args) + list(node.kwargs.values()))

    # ------------------------------------------------------------------ modules
    def call_module(self, node: fx.Node):
        import torch.nn as nn

        name = cast(str, node.target)  # a call_module node's target is the module's qualified name
        m = self.modules[name]
        x = node.args[0] if node.args else None
        xv = self.value(x)
        out_shape = self.shape(node)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not isinstance(m, nn.modules.conv._ConvTransposeNd):
            return self.conv(node, m, name, x, out_shape)
        if isinstance(m, nn.Linear):
            out_shape = self.shape_of(node, node)
            ins = self.tensor_in(node, x, -1, m.in_features)
            self.cuts.append(Cut(name, "weight", 1, tuple(ins), "in"))
            outs = self.c.new(m.out_features, pinned=matches(name, self.ignore))
            self.cuts.append(Cut(name, "weight", 0, tuple(outs), "out"))
            if m.bias is not None:
                self.cuts.append(Cut(name, "bias", 0, tuple(outs), "other"))
            self.layers[name] = Layer(name, "linear")
            self.macs.append(
                {
                    "kind": "linear",
                    "name": name,
                    "rows": math.prod(out_shape[:-1]),
                    "in": tuple(ins),
                    "out": tuple(outs),
                }
            )
            return self.space(name, Tensor(len(out_shape) - 1, outs))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if isinstance(xv, Tensor):
                if xv.axis != 1:
                    raise self.fail(node, "BatchNorm over a dim that is not the tracked channel dim")
                for p in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, p, None) is not None:
                        self.cuts.append(Cut(name, p, 0, tuple(xv.elems), "norm" if p == "weight" else "other"))
                self.layers[name] = Layer(name, "batchnorm", {"elems": tuple(xv.elems)})
            return xv
        if isinstance(m, nn.LayerNorm):
            if isinstance(xv, Tensor):
                if len(m.normalized_shape) != 1 or xv.axis != len(self.shape_of(node, node)) - 1:
                    raise self.fail(node, "LayerNorm over several dims including the channels")
                for p in ("weight", "bias"):
                    if getattr(m, p, None) is not None:
                        self.cuts.append(Cut(name, p, 0, tuple(xv.elems), "norm" if p == "weight" else "other"))
                self.layers[name] = Layer(name, "layernorm", {"elems": tuple(xv.elems)})
            return xv
        if isinstance(m, nn.GroupNorm):
            return self.group_norm(node, m, name, xv)
        if isinstance(m, nn.Flatten):
            return self.reshape(node, x, out_shape, literal_args=None)
        if isinstance(m, self.passthrough_modules):
            if isinstance(m, nn.PReLU) and m.num_parameters > 1 and isinstance(xv, Tensor):
                self.cuts.append(Cut(name, "weight", 0, tuple(xv.elems), "other"))
                self.layers[name] = Layer(name, "prelu")
            if (
                isinstance(m, nn.Softmax)
                and isinstance(xv, Tensor)
                and m.dim is not None
                and m.dim % len(self.shape_of(node, node)) == xv.axis
            ):
                self.notes.append(f"{name}: softmax over the pruned channels")
            return xv
        spec = attention.find_attention(m)
        if spec is not None:
            return attention.walk(self, node, m, name, spec)
        if isinstance(m, nn.MultiheadAttention):
            self.pin_inputs(node)
            self.notes.append(
                f"{name}: nn.MultiheadAttention is left whole (its fused projections have no head-level handler)"
            )
            return [Tensor(len(self.shape_of(node, x)) - 1, self.c.new(m.embed_dim, pinned=True)), None]
        if matches(name, self.ignore):
            self.pin_inputs(node)
            self.notes.append(f"{name}: ignored, left whole")
            return None  # what comes out is untracked: consumers pin it
        if not any(True for _ in m.parameters(recurse=True)) and not any(
            isinstance(self.value(a), Tensor) for a in node.args
        ):
            return None
        raise self.fail(node, f"{type(m).__name__} is a layer the pruning pass does not know")

    def conv(self, node, m, name, x, out_shape):
        groups = m.groups
        cin, cout = m.in_channels, m.out_channels
        ins = self.tensor_in(node, x, 1, cin)
        outs = self.c.new(cout, pinned=matches(name, self.ignore))
        in_per, out_per = cin // groups, cout // groups
        if groups == 1:
            in_cut = ins
            kind = "conv"
        elif in_per == 1:
            # depthwise (with a channel multiplier): output i*k+j reads only input i, so they go together
            for i in range(cin):
                self.c.union_all([ins[i]] + outs[i * out_per : (i + 1) * out_per])
            in_cut = None
            kind = "conv-depthwise"
        else:
            # grouped: keep the groups, thin every group alike; position j of each group is one unit
            for j in range(in_per):
                self.c.union_all([ins[g * in_per + j] for g in range(groups)])
            for j in range(out_per):
                self.c.union_all([outs[g * out_per + j] for g in range(groups)])
            in_cut = ins[:in_per]
            kind = "conv-grouped"
        if in_cut is not None:
            self.cuts.append(Cut(name, "weight", 1, tuple(in_cut), "in"))
        self.cuts.append(Cut(name, "weight", 0, tuple(outs), "out"))
        if m.bias is not None:
            self.cuts.append(Cut(name, "bias", 0, tuple(outs), "other"))
        self.layers[name] = Layer(name, kind, {"multiplier": out_per if kind == "conv-depthwise" else 1})
        self.macs.append(
            {
                "kind": kind,
                "name": name,
                "rows": math.prod(out_shape[2:]),
                "kernel": math.prod(m.kernel_size),
                "in": tuple(ins[:in_per] if kind == "conv-grouped" else ins),
                "out": tuple(outs),
                "groups": groups,
            }
        )
        return self.space(name, Tensor(1, outs))

    def group_norm(self, node, m, name, xv):
        if not isinstance(xv, Tensor):
            return xv
        if xv.axis != 1:
            raise self.fail(node, "GroupNorm over a dim that is not the tracked channel dim")
        per = m.num_channels // m.num_groups
        # keep the number of groups: position j of every group is one unit
        for j in range(per):
            self.c.union_all([xv.elems[g * per + j] for g in range(m.num_groups)])
        if m.affine:
            self.cuts.append(Cut(name, "weight", 0, tuple(xv.elems), "norm"))
            self.cuts.append(Cut(name, "bias", 0, tuple(xv.elems), "other"))
        self.layers[name] = Layer(name, "groupnorm", {"elems": tuple(xv.elems)})
        return xv

    # ------------------------------------------------------------------ functions and methods
    def call(self, node: fx.Node):
        import torch
        import torch.nn.functional as F

        target = node.target
        is_method = node.op == "call_method"
        args = node.args
        out_shape = self.shape(node)
        tracked = [
            a
            for a in _flat(args) + _flat(list(node.kwargs.values()))
            if isinstance(self.value(a), (Tensor, ParamRef, list))
        ]
        if not any(isinstance(self.value(a), (Tensor, list)) for a in tracked):
            return None if not (is_method and target in ("expand", "to", "contiguous")) else self.param_view(node)
        if target is operator.getitem:
            return self.getitem(node)
        if out_shape is None:  # size(), dim(), shape: no tensor comes out
            return None
        x = args[0] if args else None
        xv = self.value(x)
        if (is_method and target in self.passthrough_methods) or (not is_method and target in self.passthrough_fns):
            if isinstance(xv, Tensor) and len(self.shape_of(node, x)) != len(out_shape):
                raise self.fail(node, "changes the rank of a tensor with tracked channels")
            return xv if isinstance(xv, Tensor) else self.binary(node)
        if (is_method and target in self.binary_methods) or (not is_method and target in self.binary_fns):
            return self.binary(node)
        if target in (torch.cat, torch.concat) or (is_method and target == "cat"):
            return self.cat(node)
        if target is torch.flatten or (is_method and target == "flatten"):
            return self.reshape(node, x, out_shape, literal_args=None)
        if (is_method and target in ("view", "reshape")) or target is torch.reshape:
            return self.reshape(node, x, out_shape, literal_args=_shape_args(node))
        if (is_method and target in ("transpose", "permute", "movedim")) or target in (torch.transpose, torch.permute):
            return self.permute(node, xv, out_shape)
        if is_method and target == "expand":
            return self.expand(node, xv, out_shape)
        if (is_method and target in self.reduce_methods) or target in self.reduce_fns:
            return self.reduce(node, xv, out_shape)
        if target is F.pad:
            return self.pad(node, xv, out_shape)
        if is_method and target in ("unsqueeze", "squeeze") or target in (torch.unsqueeze, torch.squeeze):
            return self.squeeze(node, xv, out_shape)
        if (
            target is torch.bmm
            or target is torch.matmul
            or target is operator.matmul
            or target is F.scaled_dot_product_attention
        ):
            raise self.fail(
                node, "a matrix product over tracked channels (attention written inline) cannot be split by channel"
            )
        raise self.fail(node, "an operation the pruning pass does not know is applied to tracked channels")
