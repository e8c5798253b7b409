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

Here: the trace and ``analyze``. The graph's parts (``Classes``, ``Cut``, ``DependencyGraph``...) are in
``channels``; the rule per operation in ``ops`` (``Walker``), ``shape_ops`` and ``attention``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from repfx_deploy.errors import PassError
from repfx_deploy.passes.prune.attention import find_attention
from repfx_deploy.passes.prune.channels import DependencyGraph, matches
from repfx_deploy.passes.prune.ops import Walker

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch
    import torch.fx as fx
    import torch.nn as nn


def analyze(module: nn.Module, example: tuple[torch.Tensor, ...], *, ignore: tuple[str, ...] = ()) -> DependencyGraph:
    """Trace ``module`` (not modified) on ``example`` inputs and build its channel dependency graph."""
    from torch.fx.passes.shape_prop import ShapeProp

    gm = _trace(module, ignore)
    try:
        ShapeProp(gm).propagate(*example)
    except Exception as e:
        raise PassError(
            f"The traced model does not run on the example inputs: {type(e).__name__}: {e}", "Check the input shape."
        ) from e
    walker = Walker(gm, dict(gm.named_modules()), ignore)
    walker.run()
    return walker.result()


def _trace(module: nn.Module, ignore: tuple[str, ...]) -> fx.GraphModule:
    import torch.fx as fx

    class Tracer(fx.Tracer):
        # attention layers and ignored layers are traced as one call each: their insides (head reshapes, a
        # layer the analysis does not know) are handled as a whole, or left alone
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
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
def _len_recorded(module: nn.Module) -> Iterator[None]:
    """While tracing, ``len(x)`` in the model's forward code is recorded as a call (what ``torch.fx.wrap("len")``
    would do in the model's own source), so the common ``x.expand(len(x), ...)`` of a class token traces."""
    import torch.fx._symbolic_trace as st

    table = getattr(st, "_wrapped_fns_to_patch", None)
    if not isinstance(table, dict):  # a torch without this private table: nothing is recorded
        yield
        return
    added = []
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


def _is_container(m: nn.Module) -> bool:
    import torch.nn as nn

    return isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
