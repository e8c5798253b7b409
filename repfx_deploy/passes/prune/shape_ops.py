"""Walker rules for tensor-shaping operations: element-wise with broadcasting, concatenation, reshape/flatten,
transpose/permute, expand, (un)squeeze, reductions, channel zero-padding and indexing. Each maps the channel
elements of its input onto its output, or refuses with the layer named."""

from __future__ import annotations

import math
from typing import Any

from repfx_deploy.passes.prune.channels import Cut, Layer, LiteralEdit, ParamRef, Tensor


class ShapeRules:
    """Mixed into ``ops.Walker`` (which provides ``c``, ``cuts``, ``edits``, ``value``, ``shape``, ``fail``...)."""

    def param_view(self, node):
        v = self.value(node.args[0])
        return v if isinstance(v, ParamRef) and self.shape(node) is not None else None

    def binary(self, node):
        """Element-wise with broadcasting: full-size operands along the channel dim share their elements."""
        out_shape = self.shape(node)
        rank = len(out_shape)
        axis, elems = None, None
        operands = [a for a in _flat(node.args) if self.shape(a) is not None]
        for a in operands:
            v = self.value(a)
            if isinstance(v, Tensor):
                ax = v.axis + rank - len(self.shape(a))
                if self.shape(a)[v.axis] == 1:
                    continue
                if axis is not None and ax != axis:
                    raise self.fail(node, "combines tensors whose channels lie on different dims")
                if elems is None:
                    axis, elems = ax, list(v.elems)
                else:
                    for e, f in zip(elems, v.elems):
                        self.c.union(e, f)
        if axis is None:
            return None
        for a in operands:
            v = self.value(a)
            shape = self.shape(a)
            d = axis - (rank - len(shape))
            if isinstance(v, Tensor) or d < 0 or shape[d] == 1:
                continue
            if isinstance(v, ParamRef) and v.dims[d] is not None:
                self.cuts.append(Cut(v.module, v.name, v.dims[d], tuple(elems), "other"))
                self.layers.setdefault(f"{v.module}.{v.name}".strip("."), Layer(v.module, "param"))
            else:
                self.c.pin(elems)  # an untracked tensor of full channel size: it cannot be sliced
        return Tensor(axis, elems)

    def cat(self, node):
        items = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_shape = self.shape(node)
        dim %= len(out_shape)
        values = [self.value(a) for a in items]
        axes = {v.axis for v in values if isinstance(v, Tensor)}
        if axes == {dim}:
            elems = []
            for a, v in zip(items, values):
                elems += v.elems if isinstance(v, Tensor) else self.c.new(self.shape(a)[dim], pinned=True)
            return self.space(self.owner(node), Tensor(dim, elems))
        return self.binary(node)  # concatenation along another dim: channels line up as in an add

    def reshape(self, node, x, out_shape, literal_args):
        v = self.value(x)
        if not isinstance(v, Tensor):
            return None
        shape = self.shape(x)
        before, c = math.prod(shape[: v.axis]), shape[v.axis]
        trailing = [math.prod(shape[v.axis + 1 : v.axis + 1 + k]) for k in range(len(shape) - v.axis)]
        b = None
        for cand in range(len(out_shape)):
            # the channel dim may only merge with the dims right after it (flatten -> linear), never split
            if math.prod(out_shape[:cand]) == before and out_shape[cand] % c == 0 and out_shape[cand] // c in trailing:
                b = cand
                break
        if b is None:
            raise self.fail(
                node,
                f"a reshape from {list(shape)} to {list(out_shape)} splits the channels (dim {v.axis}) or mixes them with other dims",
            )
        size = out_shape[b]
        per = size // c
        elems = [e for e in v.elems for _ in range(per)]
        if literal_args is not None and len(literal_args) == len(out_shape):
            path, lit = literal_args[b]
            if isinstance(lit, int) and lit == size:
                self.edits.append(LiteralEdit(node.name, path, lit, tuple(elems), self.owner(node)))
        return Tensor(b, elems)

    def permute(self, node, v, out_shape):
        if not isinstance(v, Tensor):
            return None
        args = node.args[1:]
        rank = len(out_shape)
        if node.target in ("transpose",) or getattr(node.target, "__name__", "") == "transpose":
            d0, d1 = (a % rank for a in args[:2])
            axis = d1 if v.axis == d0 else d0 if v.axis == d1 else v.axis
        elif node.target == "movedim":
            raise self.fail(node, "movedim on tracked channels")
        else:
            dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            axis = [d % rank for d in dims].index(v.axis)
        return Tensor(axis, v.elems)

    def expand(self, node, v, out_shape):
        if isinstance(v, ParamRef):
            return v
        if isinstance(v, Tensor):
            return Tensor(v.axis + len(out_shape) - len(self.shape(node.args[0])), v.elems)
        return None

    def squeeze(self, node, v, out_shape):
        if not isinstance(v, Tensor):
            return None
        in_shape = self.shape(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        name = node.target if isinstance(node.target, str) else node.target.__name__
        if name == "unsqueeze":
            d = dim % len(out_shape)
            return Tensor(v.axis + (1 if d <= v.axis else 0), v.elems)
        dims = (
            range(len(in_shape))
            if dim is None
            else [d % len(in_shape) for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
        )
        return Tensor(v.axis - sum(1 for d in dims if d < v.axis and in_shape[d] == 1), v.elems)

    def reduce(self, node, v, out_shape):
        if not isinstance(v, Tensor):
            return None
        rank = len(self.shape(node.args[0]))
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        dims = (
            set(range(rank)) if dim is None else {d % rank for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
        )
        if v.axis in dims:
            return None  # reduced over the channels (a hand-written norm): nothing tracked comes out
        return Tensor(v.axis if keep else v.axis - sum(1 for d in dims if d < v.axis), v.elems)

    def pad(self, node, v, out_shape):
        if not isinstance(v, Tensor):
            return None
        pads = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        rank = len(out_shape)
        k = rank - 1 - v.axis  # pads[2k], pads[2k+1] pad the channel dim
        if 2 * k + 1 >= len(pads) or (pads[2 * k] == 0 and pads[2 * k + 1] == 0):
            return v
        if mode != "constant":
            raise self.fail(node, f"{mode!r} padding of the channel dim")
        front, back = self.c.new(pads[2 * k]), self.c.new(pads[2 * k + 1])
        arg_index = 1 if len(node.args) > 1 else None
        if arg_index is None:
            raise self.fail(node, "channel padding given as a keyword")
        self.edits.append(LiteralEdit(node.name, (1, 2 * k), pads[2 * k], tuple(front), self.owner(node)))
        self.edits.append(LiteralEdit(node.name, (1, 2 * k + 1), pads[2 * k + 1], tuple(back), self.owner(node)))
        if len(front) == len(back):
            # a symmetric pad is usually one attribute (self.pad) in forward(): keep it symmetric
            self.pairs.append((tuple(front), tuple(back)))
        self.notes.append(f"{node.name} in {self.owner(node) or 'forward'}: zero channel padding")
        return self.space(self.owner(node), Tensor(v.axis, front + v.elems + back))

    def getitem(self, node):
        src, index = node.args
        v = self.value(src)
        if isinstance(v, list):
            return v[index] if isinstance(index, int) and index < len(v) else None
        if not isinstance(v, Tensor):
            return None
        in_shape = self.shape(src)
        items = list(index) if isinstance(index, tuple) else [index]
        if any(i is Ellipsis for i in items):
            at = items.index(Ellipsis)
            fill = len(in_shape) - (len(items) - 1 - sum(1 for i in items if i is None))
            items = items[:at] + [slice(None)] * fill + items[at + 1 :]
        d_in, d_out, axis = 0, 0, None
        for item in items:
            if item is None:
                d_out += 1
                continue
            if d_in == v.axis:
                if not (isinstance(item, slice) and item == slice(None)):
                    raise self.fail(node, "indexing selects part of the tracked channels")
                axis = d_out
            if isinstance(item, slice):
                d_out += 1
            elif not isinstance(item, int):
                raise self.fail(node, "tensor indexing of a tensor with tracked channels")
            d_in += 1
        if axis is None:
            axis = d_out + (v.axis - d_in)
        return Tensor(axis, v.elems)


def _flat(args) -> list:
    import torch.fx as fx

    out = []
    for a in args if isinstance(args, (list, tuple)) else [args]:
        if isinstance(a, (list, tuple)):
            out += _flat(a)
        elif isinstance(a, fx.Node):
            out.append(a)
    return out


def _shape_args(node) -> list[tuple[tuple[int, ...], Any]] | None:
    """The target shape of a view/reshape as ``(path in node.args, literal or Node)`` per output dim."""
    args = node.args
    first = 1
    if len(args) == first + 1 and isinstance(args[first], (tuple, list)):
        return [((first, i), a) for i, a in enumerate(args[first])]
    return [((first + i,), a) for i, a in enumerate(args[first:])]
