"""Typed recipe tables: one parser for every frozen config dataclass, driven by its field annotations.

A recipe table (parsed TOML) becomes a config by ``parse_config(ConfigType, table, where="passes[0]")``. The
field annotations are the schema: ``bool``, ``int``, ``float`` (finite), ``str``, ``Path``, ``Literal[...]``,
``X | None``, ``tuple[T, ...]`` (a TOML array; a table for ``tuple[tuple[str, T], ...]``) and fixed tuples.
A key the config does not have, or a value of the wrong type, is a ``RecipeError`` that names the key path and
the expected type. The config's own ``__post_init__`` checks ranges; its ``ValueError``/``TypeError`` becomes a
``RecipeError`` for the same path. ``config_table`` is the inverse, for writing the resolved recipe back out.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from repfx_deploy.errors import RecipeError

T = TypeVar("T")


class _Mismatch(Exception):
    """A value does not fit an annotation; carries the expected type in words."""

    def __init__(self, expected: str, path: str = "", got: Any = None) -> None:
        super().__init__(expected)
        self.expected = expected
        # where inside the value the mismatch is (".name" of a table entry, "[i]" of a list item), and that part
        self.path = path
        self.got = got


def describe(annotation: Any) -> str:
    """An annotation in a user's words: ``tuple[int, ...]`` -> ``a list of integers``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a finite number"
    if annotation is str:
        return "a string"
    if annotation is Path:
        return "a path string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            inner = args[0]
            if get_origin(inner) is tuple and len(get_args(inner)) == 2:
                key, value = get_args(inner)
                return f"a table of {describe(key).removeprefix('a ')} = {describe(value)}"
            return f"a list, each {describe(inner)}"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any) -> Any:
    """``value`` (from TOML) converted to ``annotation``; raises ``_Mismatch`` when it does not fit."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(describe(annotation))
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _Mismatch(describe(annotation))
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch(describe(annotation))
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(describe(annotation))
    if annotation is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        raise _Mismatch(describe(annotation))
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        raise _Mismatch(describe(annotation))
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch(describe(annotation))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            inner = args[0]
            pairs = get_origin(inner) is tuple and len(get_args(inner)) == 2 and get_args(inner)[0] is str
            if pairs:  # name = value entries are written as a TOML table
                if not isinstance(value, Mapping):
                    raise _Mismatch(describe(annotation))
                return tuple(_entry((k, v), inner, f".{k}", v) for k, v in value.items())
            if isinstance(value, (list, tuple)):
                return tuple(_entry(v, inner, f"[{i}]", v) for i, v in enumerate(value))
            raise _Mismatch(describe(annotation))
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(coerce(v, a) for v, a in zip(value, args))
        raise _Mismatch(describe(annotation))
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise _Mismatch(describe(annotation))


def _entry(value: Any, annotation: Any, path: str, shown: Any) -> Any:
    """``coerce`` of one entry of a table or list; a mismatch names the entry (``.name`` or ``[i]``)."""
    try:
        return coerce(value, annotation)
    except _Mismatch as e:
        if isinstance(value, tuple) and len(value) == 2 and get_origin(annotation) is tuple:
            expected = describe(get_args(annotation)[1])  # a table entry: the value's type is what is wrong
        else:
            expected = e.expected
        raise _Mismatch(expected, path + e.path, shown if not e.path else e.got) from None


def typed_value(value: Any, annotation: Any, path: str) -> Any:
    """``coerce`` for the recipe value at key path ``path``: a mismatch is a ``RecipeError`` naming the path (down
    to the table entry or list item that is wrong) and the type expected there."""
    try:
        return coerce(value, annotation)
    except _Mismatch as e:
        where, got = f"{path}{e.path}", (e.got if e.path else value)
        raise RecipeError(
            f"{where} must be {e.expected}; got {got!r} ({type(got).__name__}).", f"Fix {where} in the recipe."
        ) from None


def _fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls, include_extras=False)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


def parse_config(cls: type[T], table: Any, where: str, *, fix: str | None = None) -> T:
    """Build ``cls`` (a dataclass) from the recipe table ``table``; ``where`` is its key path for messages.

    Raises ``RecipeError`` naming ``where.key`` for an unknown key, a value of the wrong type, or a value the
    config's ``__post_init__`` refuses.
    """
    if not isinstance(table, Mapping):
        raise RecipeError(
            f"{where} must be a table, got {type(table).__name__} {table!r}.", fix or f"Write {where} as a TOML table."
        )
    fields = _fields(cls)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise RecipeError(
            f"Unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}.",
            fix or f"Allowed keys there: {', '.join(sorted(fields))}.",
        )
    kwargs = {key: typed_value(value, fields[key], f"{where}.{key}") for key, value in table.items()}
    try:
        return cls(**kwargs)
    except RecipeError as e:
        raise RecipeError(f"{where}: {e.problem}", e.fix) from e
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}", f"Fix the value in {where}.") from e


def _is_pairs(annotation: Any) -> bool:
    """Whether ``annotation`` is (or has an arm that is) ``tuple[tuple[str, T], ...]``, written as a table."""
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_pairs(a) for a in get_args(annotation))
    args = get_args(annotation)
    if get_origin(annotation) is not tuple or len(args) != 2 or args[1] is not Ellipsis:
        return False
    inner = args[0]
    return get_origin(inner) is tuple and len(get_args(inner)) == 2 and get_args(inner)[0] is str


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    return value


def config_table(config: Any) -> dict[str, Any]:
    """The TOML-ready table that ``parse_config`` turns back into ``config`` (fields that are None are left out,
    as TOML has no null)."""
    out: dict[str, Any] = {}
    for name, annotation in _fields(type(config)).items():
        value = getattr(config, name)
        if value is None:
            continue
        out[name] = {} if value == () and _is_pairs(annotation) else _plain(value)
    return out


def config_changes(config: Any) -> dict[str, Any]:
    """The part of ``config_table(config)`` whose fields differ from their defaults: what the user set."""
    changed = set()
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # a required field is always the user's
            changed.add(f.name)
            continue
        if getattr(config, f.name) != default:
            changed.add(f.name)
    return {k: v for k, v in config_table(config).items() if k in changed}


def is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)
