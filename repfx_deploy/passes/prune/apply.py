"""Physically remove the pruned channels: slice weights, biases, norm parameters and buffers, and update the
layers' attributes (``in_channels``, ``groups``, ``num_features``, head counts, ...) so the module still runs and
exports. The result is a plain dense module: no masks, no hooks.

Literals baked into a forward (a zero-pad amount, ``view(-1, 400)``) are updated where the module keeps them in
an ``int`` attribute (``self.pad``); the module keeps its own class when its output then matches the traced
graph's. Otherwise the traced ``torch.fx.GraphModule`` (with the new literals) is returned, and the record says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from repfx_deploy.errors import PassError

if TYPE_CHECKING:
    import torch
    import torch.fx as fx
    import torch.nn as nn

    from repfx_deploy.passes.prune.graph import DependencyGraph


def apply_plan(
    module: nn.Module,
    graph: DependencyGraph,
    keep: dict[int, bool],
    example: tuple[torch.Tensor, ...],
    *,
    gm: fx.GraphModule | None = None,
    find: Callable[[int], int] | None = None,
) -> tuple[nn.Module, dict]:
    """Prune ``module`` (the module ``graph`` was traced from, or a copy of it) in place; returns the module to
    use (itself, or ``gm`` when a forward literal could not be updated through an attribute) and a record.

    ``gm``: the traced graph module to edit alongside, sharing ``module``'s parameters (``graph.gm``, or a copy
    made together with ``module``); needed only when ``literals_change(graph, keep)``, else None skips it.
    ``find``: element -> class root (default: ``graph.classes.find``; a precomputed table is faster)."""
    import torch

    find = find or graph.classes.find
    if gm is None and literals_change(graph, keep, find):
        raise ValueError(
            "apply_plan: this plan changes literals of the traced forward, so it needs the graph module (gm)"
        )

    def kept(elems) -> list[int]:
        return [i for i, e in enumerate(elems) if keep.get(find(e), True)]

    with torch.no_grad():
        for cut in graph.cuts:
            idx = kept(cut.elems)
            if len(idx) == len(cut.elems):
                continue
            for root in (module, gm) if gm is not None else (module,):
                owner = _owner(root, cut.module)
                if owner is None:
                    continue
                t = getattr(owner, cut.name)
                if t.shape[cut.dim] != len(cut.elems):
                    continue  # already sliced through a shared object
                new = t.index_select(cut.dim, torch.tensor(idx, dtype=torch.long)).contiguous()
                if isinstance(t, torch.nn.Parameter):
                    t.data = new  # same Parameter object: the traced graph and the module share it
                else:
                    setattr(owner, cut.name, new)
    for layer in graph.layers.values():
        update_module(module, layer, kept)
    changed = _update_literals(gm, graph, kept) if gm is not None else []
    return _choose(module, gm, example, changed)


def literals_change(graph: DependencyGraph, keep: dict[int, bool], find: Callable[[int], int] | None = None) -> bool:
    """Whether ``keep`` changes a literal of the traced forward (a pad amount, a reshape size): only then does
    applying it need (a copy of) the traced graph module."""
    find = find or graph.classes.find
    return any(sum(1 for e in edit.elems if keep.get(find(e), True)) // edit.per != edit.old for edit in graph.edits)


def _owner(root: nn.Module, name: str):
    try:
        return root.get_submodule(name) if name else root
    except AttributeError:
        return None


def update_module(root: nn.Module, layer, kept) -> None:
    """Make ``layer``'s attributes agree with its sliced weights."""
    m = _owner(root, layer.name)
    if m is None:
        return
    kind = layer.kind
    if kind.startswith("conv"):
        m.out_channels = m.weight.shape[0]
        if kind == "conv-depthwise":
            m.groups = m.out_channels // layer.info["multiplier"]
            m.in_channels = m.groups
        else:
            m.in_channels = m.weight.shape[1] * m.groups
    elif kind == "linear":
        m.out_features, m.in_features = m.weight.shape
    elif kind == "batchnorm":
        m.num_features = len(kept(layer.info["elems"]))
    elif kind == "layernorm":
        m.normalized_shape = (len(kept(layer.info["elems"])),)
    elif kind == "groupnorm":
        m.num_channels = len(kept(layer.info["elems"]))
    elif kind == "prelu":
        m.num_parameters = m.weight.shape[0]
    elif kind == "attention":
        heads_attr, head_dim, inner = layer.info["heads_attr"], layer.info["head_dim"], layer.info["inner"]
        qkv = next(getattr(m, n) for n in ("qkv", "query", "q", "q_proj", "to_q") if hasattr(m, n))
        new_inner = qkv.weight.shape[0] // (3 if hasattr(m, "qkv") else 1)
        setattr(m, heads_attr, new_inner // head_dim)
        for attr in ("all_head_size", "inner_dim", "inner", "attn_dim"):
            if getattr(m, attr, None) == inner:
                setattr(m, attr, new_inner)


def _update_literals(gm: fx.GraphModule, graph: DependencyGraph, kept) -> list[dict]:
    """Write the new literals into the traced graph ``gm`` (the owning modules' int attributes: ``_choose``)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    changed = []
    for edit in graph.edits:
        new = len(kept(edit.elems)) // edit.per
        if new == edit.old:
            continue
        node = nodes[edit.node]
        args = list(node.args)
        if len(edit.path) == 1:
            args[edit.path[0]] = new
        else:
            inner = list(args[edit.path[0]])
            inner[edit.path[1]] = new
            args[edit.path[0]] = type(args[edit.path[0]])(inner)
        node.args = tuple(args)
        changed.append({"node": edit.node, "owner": edit.owner, "old": edit.old, "new": new})
    if changed:
        gm.recompile()
    return changed


def _choose(module: nn.Module, gm: fx.GraphModule | None, example, changed: list[dict]) -> tuple[nn.Module, dict]:
    """Keep the module's own class when its forward agrees with the traced graph after attribute updates.

    With no literal changed, the traced graph computes what the module's own forward does on the same weights,
    so only the module is run (it must still run)."""
    import torch

    record = {"literals": changed, "module_type": type(module).__name__, "graph_module": False}
    module.eval()
    if not changed:
        with torch.no_grad():
            try:
                module(*example)
            except Exception as e:
                raise PassError(
                    f"The pruned {type(module).__name__} no longer runs its own forward: {type(e).__name__}: {e}.",
                    "A layer's forward depends on a channel count it does not read from its weights; add that layer to ignore.",
                ) from e
        return module, record
    assert gm is not None
    updates: dict[tuple[str, int], set[int]] = {}
    for c in changed:
        updates.setdefault((c["owner"], c["old"]), set()).add(c["new"])
    fixable = True
    for (owner, old), new in updates.items():
        m = _owner(module, owner)
        attrs = [a for a, v in vars(m).items() if type(v) is int and v == old] if m is not None else []
        if len(new) != 1 or not attrs:
            fixable = False
            continue
        for a in attrs:
            setattr(m, a, next(iter(new)))
    gm.eval()
    with torch.no_grad():
        try:
            reference = gm(*example)
        except Exception as e:
            raise PassError(
                f"The pruned graph does not run: {type(e).__name__}: {e}",
                "Report this model; add the failing layer to ignore.",
            ) from e
        try:
            ok = fixable and _same(module(*example), reference)
        except Exception as e:
            ok = False
            record["own_class_error"] = f"{type(e).__name__}: {e}"
    if ok:
        return module, record
    record["graph_module"] = True
    record["module_type"] = "GraphModule"
    record["why"] = "a channel count is a literal in forward() with no attribute holding it"
    return gm, record


def _same(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b
