"""Input signatures: the names, shapes and dtypes a model is called with."""

from __future__ import annotations

import re
from dataclasses import dataclass

from repfx_deploy.errors import InputShapeError

SUPPORTED_DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One model input: a name, a fully static shape, and a numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name:
            raise InputShapeError("An input has an empty name.", "Give every input a name.")
        if any((not isinstance(d, int)) or d <= 0 for d in self.shape):
            raise InputShapeError(
                f"Input {self.name!r} has shape {self.shape}; every dimension must be a positive integer.",
                "Pass a static shape such as --input-shape 1,3,32,32.",
            )
        if self.dtype not in SUPPORTED_DTYPES:
            raise InputShapeError(
                f"Input {self.name!r} has dtype {self.dtype!r}, which is not supported.",
                f"Use one of {', '.join(SUPPORTED_DTYPES)}.",
            )

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(name=str(d["name"]), shape=tuple(int(x) for x in d["shape"]), dtype=str(d.get("dtype", "float32")))

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{','.join(map(str, self.shape))}]"


_SHAPE_RE = re.compile(
    r"^\s*(?:(?P<name>[A-Za-z_][\w.]*)=)?(?P<dims>\d+(?:\s*[,x]\s*\d+)*)\s*(?::\s*(?P<dtype>\w+))?\s*$"
)


def parse_input_shape(text: str, index: int = 0) -> InputSpec:
    """Parse ``1,3,32,32``, ``1x3x32x32``, ``x=1,3,32,32`` or ``1,3,32,32:float32`` into an ``InputSpec``.

    Inputs without a name are called ``input`` (the first) or ``input_<i>`` (the others).
    """
    m = _SHAPE_RE.match(text)
    if m is None:
        raise InputShapeError(
            f"Cannot read the input shape {text!r}.",
            "Write it as comma-separated positive integers, optionally named and typed: "
            "--input-shape 1,3,32,32 or --input-shape x=1,3,32,32:float32.",
        )
    dims = tuple(int(d) for d in re.split(r"\s*[,x]\s*", m.group("dims")))
    name = m.group("name") or ("input" if index == 0 else f"input_{index}")
    return InputSpec(name=name, shape=dims, dtype=m.group("dtype") or "float32")


def parse_input_shapes(texts: list[str] | tuple[str, ...]) -> tuple[InputSpec, ...]:
    """Parse several ``--input-shape`` values; names must be unique."""
    specs = tuple(parse_input_shape(t, i) for i, t in enumerate(texts))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputShapeError(f"Input names repeat: {names}.", "Give each input its own name, e.g. a=1,3 b=1,5.")
    return specs
