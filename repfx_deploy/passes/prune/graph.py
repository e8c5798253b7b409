"""Channel dependency analysis: which channels of which layers must be removed together.

The model is traced with ``torch.fx`` and its tensor shapes propagated on example inputs. Every channel
position of every tracked tensor is an *element*; operations that tie positions together (a residual add, a
depthwise conv, BatchNorm, a head of an attention layer) unite their elements, so each union-find class is one
unit that is either kept or removed everywhere at once. A class holds the slices (``Cut``) of every weight,
bias or buffer it touches, in every layer.

Producers (conv/linear outputs, attention heads, channel zero-padding) create elements; consumers (the input
side of a conv/linear) slice by them; pass-through operations (activations, pooling, BatchNorm, LayerNorm)
carry them. Elements of the model's inputs and outputs are *pinned*: they are never removed.

What cannot be expressed this way (a reshape that splits channels, a matmul over channels, an unknown layer)
raises ``PassError`` naming the layer, with adding it to ``ignore`` as the fix: an ignored layer is left whole.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from repfx_deploy.errors import PassError

if TYPE_CHECKING:
    import torch
    import torch.fx as fx
    import torch.nn as nn

Role = Literal["out", "in", "norm", "other"]


class Classes:
    """Union-find over channel elements, with a pinned flag per class."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pinned: list[bool] = []

    def new(self, n: int, *, pinned: bool = False) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.pinned.extend([pinned] * n)
        return list(range(start, start + n))

    def find(self, e: int) -> int:
        root = e
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[e] != root:  # path compression
            self.parent[e], e = root, self.parent[e]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.pinned[ra] = self.pinned[ra] or self.pinned[rb]

    def union_all(self, elems: list[int]) -> None:
        for e in elems[1:]:
            self.union(elems[0], e)

    def pin(self, elems: list[int]) -> None:
        for e in elems:
            self.pinned[self.find(e)] = True

    def is_pinned(self, e: int) -> bool:
        return self.pinned[self.find(e)]


@dataclass(frozen=True)
class Cut:
    """Slice ``module.<name>`` along ``dim``: index ``i`` stays iff the class of ``elems[i]`` is kept."""

    module: str
    name: str
    dim: int
    elems: tuple[int, ...]
    role: Role


@dataclass(frozen=True)
class LiteralEdit:
    """A literal in the traced forward (a pad amount, a reshape size, a head count) that must become the number
    of kept positions among ``elems`` divided by ``per``. ``owner`` is the module whose forward holds it."""

    node: str
    path: tuple[int, ...]  # where in node.args: (arg index,) or (arg index, item index)
    old: int
    elems: tuple[int, ...]
    owner: str
    per: int = 1


@dataclass(frozen=True)
class Layer:
    """A layer whose attributes change with its weights; ``kind`` says how (see apply.update_module)."""

    name: str
    kind: str
    info: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Tensor:
    """The tracked channel axis of one traced tensor: its axis and one element per position."""

    axis: int
    elems: list[int]


@dataclass
class ParamRef:
    """A parameter read with ``get_attr`` (a class token, a position embedding, a layer-scale vector) on its
    way to an operation with a tracked tensor; ``dims[i]`` is the parameter dim behind value dim ``i``."""

    module: str
    name: str
    dims: tuple[int | None, ...]


@dataclass
class DependencyGraph:
    """The result of the analysis: classes, the cuts and literals they drive, the spaces (element lists of
    tracked tensors, used to form groups), and what the MAC model needs."""

    gm: "fx.GraphModule"
    classes: Classes
    cuts: list[Cut]
    edits: list[LiteralEdit]
    layers: dict[str, Layer]
    spaces: list[tuple[str, tuple[int, ...]]]  # (producer layer name, elements)
    pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]  # symmetric pads: equal kept counts front and back
    macs: list[dict]  # per conv/linear/attention call: what its MACs depend on
    notes: list[str]


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """``name`` matches a pattern exactly, as a glob, or as a prefix of a submodule path (``layer1`` covers
    ``layer1.0.conv1``)."""
    return any(name == p or fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def analyze(module: "nn.Module", example: tuple["torch.Tensor", ...], *, ignore: tuple[str, ...] = ()) -> DependencyGraph:
    """Trace ``module`` (not modified) on ``example`` inputs and build its channel dependency graph."""
    from torch.fx.passes.shape_prop import ShapeProp

    from repfx_deploy.passes.prune import attention
    from repfx_deploy.passes.prune.ops import Walker

    gm = _trace(module, ignore)
    try:
        ShapeProp(gm).propagate(*example)
    except Exception as e:
        raise PassError(f"The traced model does not run on the example inputs: {type(e).__name__}: {e}", "Check the input shape.") from e
    walker = Walker(gm, dict(gm.named_modules()), ignore, attention)
    walker.run()
    return walker.result()


def _trace(module: "nn.Module", ignore: tuple[str, ...]) -> "fx.GraphModule":
    import torch.fx as fx

    from repfx_deploy.passes.prune.attention import find_attention

    class Tracer(fx.Tracer):
        # attention layers and ignored layers are traced as one call each: their insides (head reshapes, a
        # layer the analysis does not know) are handled as a whole, or left alone
        def is_leaf_module(self, m: "nn.Module", qualname: str) -> bool:
            if qualname and matches(qualname, ignore) and not _is_container(m):
                return True
            if find_attention(m) is not None:
                return True
            return super().is_leaf_module(m, qualname)

    tracer = Tracer()
    try:
        with _len_recorded(module):
            graph = tracer.trace(module)
    except Exception as e:
        raise PassError(
            f"torch.fx cannot trace {type(module).__name__}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "Data-dependent control flow in forward() cannot be traced; add the layer that has it to the pass's "
            "ignore list (it is then traced as one opaque call and left whole).",
        ) from e
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


@contextlib.contextmanager
def _len_recorded(module: "nn.Module"):
    """While tracing, ``len(x)`` in the model's forward code is recorded as a call (what ``torch.fx.wrap("len")``
    would do in the model's own source), so the common ``x.expand(len(x), ...)`` of a class token traces."""
    import torch.fx._symbolic_trace as st

    table = getattr(st, "_wrapped_fns_to_patch", None)
    added = []
    if isinstance(table, dict):
        for m in module.modules():
            scope = getattr(type(m).forward, "__globals__", None)
            if scope is not None and (id(scope), "len") not in table:
                table[(id(scope), "len")] = scope
                added.append((id(scope), "len"))
    try:
        yield
    finally:
        for key in added:
            table.pop(key, None)


def _is_container(m: "nn.Module") -> bool:
    import torch.nn as nn

    return isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
