"""The parts of a channel dependency graph (see ``graph`` for the model): elements and their union-find classes,
the cuts and literal edits a class drives, the layers touched, the tracked tensors, and the finished graph.

Its own module, below ``graph`` (which runs the analysis) and the walker rules (``ops``, ``shape_ops``,
``attention``) that all build these, so none of them imports another to get them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch.fx as fx

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

    gm: fx.GraphModule
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
