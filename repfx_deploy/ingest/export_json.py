"""Vet the program JSON of a ``torch.export`` archive: no string in it may become code.

``torch.export.load`` (torch 2.13) turns parts of the JSON into code, so a crafted archive runs Python without a
single pickle in it:

- ``expr_str`` (symbolic sizes) goes to ``sympy.sympify``, which ``eval``\\ s it;
- names (placeholders, keyword arguments, tree-spec keys) are pasted into the ``forward`` source that
  ``torch.fx`` generates and ``exec``\\ s;
- tree specs import a module and take an attribute by name (enum members, a ``defaultdict``'s factory).

So, without ``--trust-pickle``: each ``expr_str`` must parse to sympy constructors, symbol names and numbers
only; a tree spec may name a ``defaultdict`` factory only among the builtin containers; and every other string
must be name-like (letters, digits, ``_ . -``), except the free text that never reaches code (node metadata,
string constants, which are ``repr``-ed, guards, which are not run: ``loader`` asks for ``check_guards=False``).
A string that is neither is refused with an ``UntrustedPickleError`` naming the JSON path.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from repfx_deploy.ingest.safe_pickle import untrusted

_NAME_LIKE = re.compile(r"[A-Za-z0-9_.\-]*")
# Keys whose subtree is free text that the loader never turns into code (see the module docstring).
_FREE_TEXT = frozenset({"metadata", "as_string", "as_strings", "torch_version", "guards_code"})
# Keys whose string value is itself JSON (a pytree TreeSpec), vetted after parsing.
_TREESPEC = frozenset({"in_spec", "out_spec"})
_FACTORIES = {
    "builtins": frozenset({"list", "dict", "set", "tuple", "int", "float", "str", "bool"}),
    "collections": frozenset({"OrderedDict", "defaultdict", "deque", "Counter"}),
}
# The sympy names the serializer writes (``srepr``) and torch's own sympy functions; anything else is refused.
_SYMPY_CALLS = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor",
        "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan",
        "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "Piecewise", "ExprCondPair", "Half",
        "NegativeOne", "One", "Zero", "BooleanTrue", "BooleanFalse",
    }
)  # fmt: skip
_SYMBOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MAX_EXPR = 20_000


def vet_program_json(data: bytes, *, path: Path, member: str) -> None:
    """Refuse ``member`` of ``path`` (a serialized ``ExportedProgram``) if a string in it could become code."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return  # torch cannot parse it either and stops with an error
    try:
        _walk(doc, (), path, member)
    except RecursionError as e:
        raise untrusted(path, member, "is nested too deeply to be checked") from e


def _walk(node: Any, keys: tuple[str, ...], path: Path, member: str, *, spec: bool = False) -> None:
    """``spec``: inside a parsed TreeSpec, where each node's ``context`` is JSON in a string."""
    if isinstance(node, dict):
        _check_factory(node, keys, path, member)
        for key, value in node.items():
            _check_name(str(key), keys, path, member)
            where = (*keys, str(key))
            if key in _FREE_TEXT and not spec:
                continue
            if key == "expr_str" and not spec:
                _check_sympy(value, where, path, member)
            elif isinstance(value, str) and (key in _TREESPEC and not spec or key == "context" and spec):
                _walk(_parse_json(value, where, path, member), where, path, member, spec=True)
            else:
                _walk(value, where, path, member, spec=spec)
    elif isinstance(node, list):
        for item in node:
            _walk(item, keys, path, member, spec=spec)
    elif isinstance(node, str):
        _check_name(node, keys, path, member)


def _check_name(text: str, keys: tuple[str, ...], path: Path, member: str) -> None:
    if not _NAME_LIKE.fullmatch(text):
        raise untrusted(path, member, f"has {_shown(text)} at {_where(keys)}, where only a name belongs")


def _check_factory(node: dict[str, Any], keys: tuple[str, ...], path: Path, member: str) -> None:
    if "default_factory_module" not in node and "default_factory_name" not in node:
        return
    module, name = node.get("default_factory_module"), node.get("default_factory_name")
    if not (isinstance(module, str) and isinstance(name, str) and name in _FACTORIES.get(module, ())):
        raise untrusted(path, member, f"names {module}.{name} as a defaultdict factory at {_where(keys)}")


def _parse_json(text: str, keys: tuple[str, ...], path: Path, member: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise untrusted(path, member, f"has a tree spec at {_where(keys)} that is not JSON") from e


def _check_sympy(value: Any, keys: tuple[str, ...], path: Path, member: str) -> None:
    """``sympify`` evaluates the string: allow constructor calls, symbol names, numbers and arithmetic only."""
    ok = isinstance(value, str) and len(value) <= _MAX_EXPR and value.isascii()
    if ok:
        try:
            ok = _sympy_node_ok(ast.parse(value, mode="eval").body)
        except (SyntaxError, ValueError, RecursionError):
            ok = False
    if not ok:
        raise untrusted(path, member, f"has {_shown(str(value))} at {_where(keys)}, which is not a size expression")


def _sympy_node_ok(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float, bool))
    if isinstance(node, ast.Name):  # looking a name up runs nothing; only calls of the allowed names are let through
        return bool(_SYMBOL_NAME.fullmatch(node.id))
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.USub, ast.UAdd, ast.Not, ast.Invert)) and _sympy_node_ok(node.operand)
    if isinstance(node, ast.BinOp):
        return _sympy_node_ok(node.left) and _sympy_node_ok(node.right)
    if isinstance(node, ast.BoolOp):
        return all(_sympy_node_ok(v) for v in node.values)
    if isinstance(node, ast.Compare):
        return _sympy_node_ok(node.left) and all(_sympy_node_ok(v) for v in node.comparators)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            return False
        func = node.func.id
        if func not in _SYMPY_CALLS and func not in _torch_sympy_functions():
            return False
        args_ok = all(
            _symbol_name(a) if func == "Symbol" and i == 0 else _sympy_node_ok(a) for i, a in enumerate(node.args)
        )
        kwargs_ok = all(
            k.arg is not None and not k.arg.startswith("_") and isinstance(k.value, ast.Constant)
            and isinstance(k.value.value, bool)
            for k in node.keywords
        )  # fmt: skip
        return args_ok and kwargs_ok
    return False


def _symbol_name(node: ast.AST) -> bool:
    # the only string allowed: a symbol's name (strings given to other sympy functions are sympified again)
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(_SYMBOL_NAME.fullmatch(node.value))


_TORCH_SYMPY: frozenset[str] | None = None


def _torch_sympy_functions() -> frozenset[str]:
    """The sympy function classes torch defines (``FloorDiv``, ``ModularIndexing``, ...), which it passes to sympify."""
    global _TORCH_SYMPY
    if _TORCH_SYMPY is None:
        import sympy
        import torch.utils._sympy.functions as functions

        _TORCH_SYMPY = frozenset(
            name
            for name, obj in vars(functions).items()
            if not name.startswith("_") and isinstance(obj, type) and issubclass(obj, sympy.Function)
        )
    return _TORCH_SYMPY


def _where(keys: tuple[str, ...]) -> str:
    return "/".join(keys) or "the top level"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
