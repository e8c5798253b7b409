"""Vet the operators a loaded graph calls, before the model is run: no file access, no Python callables.

A loaded ``torch.export`` or TorchScript graph runs when the model is first called (``inspect`` checks the
signature that way). Most of what it can call is arithmetic, but torch also registers operators that touch the
file system (``aten::save`` writes any path, ``aten::from_file`` reads one), and an export graph can name any
Python callable reachable from the ``torch`` module (``torch.serialization.os.system`` resolves). So, without
``--trust-pickle``, a graph may call operators without a file-like string argument, higher-order operators,
and the arithmetic builtins symbolic shapes use; anything else is refused with an ``UntrustedPickleError``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.ingest.safe_pickle import untrusted

if TYPE_CHECKING:
    import torch

# Operators whose string arguments are paths or stores (listed for their effect, whatever the argument names).
_DENIED_OPS = frozenset({"aten::save", "aten::from_file", "debugprims::load_tensor"})
_FILE_ARG = re.compile(r"file|path|dir|url", re.IGNORECASE)
# Python modules whose builtins export graphs call (getitem, symbolic-shape arithmetic).
_BUILTIN_MODULES = ("_operator", "math")


def denied_op(name: str, arguments: list[Any]) -> bool:
    """Whether the operator ``name`` (``ns::op``) with these schema arguments may touch files."""
    if name in _DENIED_OPS:
        return True
    return any("str" in str(a.type) and _FILE_ARG.search(a.name) for a in arguments)


def vet_fx_graphs(root: torch.fx.GraphModule, path: Path) -> None:
    """Refuse ``root`` (and the subgraphs of its higher-order operators) if a node calls anything not allowed."""
    import torch.fx

    for module in root.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("call_method", "call_module"):
                raise untrusted(path, None, f"has a graph node {node.name!r} that calls {node.op} {node.target!r}")
            if node.op == "call_function":
                _check_callable(node.target, node.name, path)
                for leaf in _leaves((node.args, node.kwargs)):
                    _check_leaf(leaf, node.name, path)


def _check_callable(target: Any, node: str, path: Path) -> None:
    import torch

    if isinstance(target, torch._ops.OpOverload):
        if denied_op(target._schema.name, list(target._schema.arguments)):
            raise untrusted(path, None, f"calls {target._schema.name} (file access) in graph node {node!r}")
        return
    if isinstance(target, torch._ops.HigherOrderOperator):
        return
    if (
        getattr(target, "__module__", None) in _BUILTIN_MODULES
        and type(target).__name__ == "builtin_function_or_method"
    ):
        return
    if target in _torch_functions():
        return
    name = getattr(target, "__qualname__", None) or type(target).__name__
    module = getattr(target, "__module__", None) or "?"
    raise untrusted(path, None, f"calls the Python callable {module}.{name} in graph node {node!r}")


def _check_leaf(leaf: Any, node: str, path: Path) -> None:
    import torch
    import torch.fx

    if leaf is None or leaf is Ellipsis or isinstance(leaf, (bool, int, float, complex, str, slice, torch.fx.Node)):
        return
    inert = (torch.dtype, torch.device, torch.layout, torch.memory_format, torch.SymInt, torch.SymFloat, torch.SymBool)
    if isinstance(leaf, (*inert, torch.Tensor)):
        return
    if callable(leaf):
        _check_callable(leaf, node, path)
        return
    raise untrusted(path, None, f"passes a {type(leaf).__name__} object to graph node {node!r}")


def _leaves(tree: Any) -> list[Any]:
    out: list[Any] = []
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        else:
            out.append(item)
    return out


def _torch_functions() -> tuple[Any, ...]:
    """The plain-Python torch functions an export graph calls (symbolic shapes; grad mode in pre-dispatch graphs)."""
    import torch

    return (
        torch.sym_int, torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_not,
        torch.sym_sqrt, torch.sym_sum, torch._C._set_grad_enabled,
    )  # fmt: skip


def vet_script_graphs(module: torch.jit.ScriptModule, path: Path) -> None:
    """Refuse a loaded TorchScript module if any method of it or its submodules calls a file-access operator."""
    import torch

    for sub in module.modules():
        c = getattr(sub, "_c", None)
        if c is None:
            continue
        for method in c._method_names():
            graph = c._get_method(method).graph.copy()
            torch._C._jit_pass_inline(graph)  # submodule and function calls become their bodies
            _check_script_block(graph, f"{sub.original_name}.{method}", path)


def _check_script_block(block: Any, where: str, path: Path) -> None:
    import torch

    for node in block.nodes():
        kind = node.kind()
        if kind == "prim::PythonOp":
            raise untrusted(path, None, f"calls Python code from TorchScript in {where}")
        schema = node.schema()
        arguments = list(torch._C.parse_schema(schema).arguments) if schema != "(no schema)" else []
        if denied_op(kind, arguments):
            raise untrusted(path, None, f"calls {kind} (file access) in {where}")
        for inner in node.blocks():
            _check_script_block(inner, where, path)
