"""Strict JSON for every document the project writes: reports, manifests, caches, ``--json`` output.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which no strict parser (JavaScript's, ``jq``, Go's)
reads back: one NaN accuracy made a whole ``report.json`` unreadable. ``dumps`` writes a value that is not a
finite number as ``null`` (a figure that could not be computed) and then serializes with ``allow_nan=False``, so
a non-finite value that slipped through anyway is refused instead of written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by ``None``, at any depth.

    Mappings become dicts, tuples and lists become lists, numpy scalars and arrays become Python numbers and
    lists (their NaNs replaced too). Anything else is returned as it is.
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, without importing numpy here
    if callable(tolist) and type(value).__module__ == "numpy":
        return finite(tolist())
    return value


def dumps(doc: Any, *, indent: int | None = 2, sort_keys: bool = False, default: Any = str) -> str:
    """``doc`` as strict JSON text (see the module docstring); ``default`` serializes other objects (``str``)."""
    return json.dumps(finite(doc), indent=indent, sort_keys=sort_keys, default=default, allow_nan=False)


def write(path: Path, doc: Any, **kwargs: Any) -> None:
    """Write ``doc`` to ``path`` as strict JSON with a final newline (not atomic: the caller decides that)."""
    Path(path).write_text(dumps(doc, **kwargs) + "\n", encoding="utf-8")
