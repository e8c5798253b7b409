"""Read an ONNX model's input signature, letting the user pin dynamic dimensions.

Beside ``spec`` (no torch, no TVM; ``onnx`` only when a file is read) because both ingest and compile need it.
"""

from __future__ import annotations

from pathlib import Path

from repfx_deploy.errors import InputShapeError, ModelLoadError
from repfx_deploy.spec import InputSpec

# ONNX TensorProto element types to numpy dtype names (the ones SUPPORTED_DTYPES knows).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


def onnx_input_specs(path: Path, overrides: tuple[InputSpec, ...] = ()) -> tuple[InputSpec, ...]:
    """``graph_input_specs`` of the ONNX file at ``path`` (weights are not read)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(
            f"Cannot parse {str(path)!r} as ONNX: {e}", "Check that the file is a complete .onnx model."
        ) from e
    return graph_input_specs(model, overrides)


def graph_input_specs(model, overrides: tuple[InputSpec, ...] | None = ()) -> tuple[InputSpec, ...]:
    """The graph inputs of ``model`` (an ``onnx.ModelProto``; initializers excluded) as ``InputSpec``s.

    ``overrides`` replace them by position, to pin dynamic dimensions. An override named ``input``/``input_<i>``
    (the default names) takes the graph's own name, so a bare ``--input-shape 1,3,64,64`` fits any
    single-input model. An override that contradicts a static dimension, and a dynamic dimension with no
    override, raise ``InputShapeError``.
    """
    overrides = tuple(overrides or ())
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if overrides and len(overrides) != len(graph_inputs):
        raise InputShapeError(
            f"The ONNX model has {len(graph_inputs)} input(s) ({', '.join(i.name for i in graph_inputs)}), "
            f"but {len(overrides)} input shape(s) were given.",
            "Give one --input-shape per graph input, in order.",
        )
    specs = []
    for idx, value in enumerate(graph_inputs):
        tensor_type = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise InputShapeError(
                f"Input {value.name!r} has an unsupported ONNX element type {tensor_type.elem_type}.",
                "Use float32 or integer inputs.",
            )
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
        if overrides:
            o = overrides[idx]
            name = value.name if o.name in ("input", f"input_{idx}") else o.name
            if name != value.name:
                raise InputShapeError(
                    f"Input shape {idx} names {o.name!r}, but input {idx} of the graph is {value.name!r}.",
                    "Use the graph's input names.",
                )
            if len(o.shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, o.shape)):
                raise InputShapeError(
                    f"Input {value.name!r} is {['?' if d is None else d for d in dims]} in the ONNX file, but {list(o.shape)} was given.",
                    "Only dynamic dimensions (?) can be chosen; keep the static ones.",
                )
            specs.append(InputSpec(name=name, shape=o.shape, dtype=o.dtype))
            continue
        static = [d for d in dims if d is not None]
        if len(static) != len(dims):
            shown = ",".join("?" if d is None else str(d) for d in dims)
            raise InputShapeError(
                f"Input {value.name!r} has dynamic dimensions ({shown}); TVM needs static shapes to schedule kernels.",
                "Pin them with --input-shape, e.g. --input-shape 1,3,224,224.",
            )
        specs.append(InputSpec(name=value.name, shape=tuple(static), dtype=dtype))
    return tuple(specs)
