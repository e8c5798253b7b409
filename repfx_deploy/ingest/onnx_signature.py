"""Read an ONNX model's input signature, letting the user pin dynamic dimensions."""

from __future__ import annotations

from pathlib import Path

from repfx_deploy.errors import InputShapeError, ModelLoadError
from repfx_deploy.spec import InputSpec

# ONNX TensorProto element types to numpy dtype names (the ones SUPPORTED_DTYPES knows).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


def onnx_input_specs(path: Path, overrides: tuple[InputSpec, ...] = ()) -> tuple[InputSpec, ...]:
    """The graph inputs of ``path`` (initializers excluded), with ``overrides`` replacing them by position.

    An override named ``input``/``input_<i>`` (the default names) takes the graph's own name, so a bare
    ``--input-shape 1,3,64,64`` works on any single-input model. Dynamic dimensions without an override raise.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(f"Cannot parse {str(path)!r} as ONNX: {e}", "Check that the file is a complete .onnx model.") from e
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if overrides and len(overrides) != len(graph_inputs):
        raise InputShapeError(
            f"{str(path)!r} has {len(graph_inputs)} input(s) ({', '.join(i.name for i in graph_inputs)}), "
            f"but {len(overrides)} --input-shape value(s) were given.",
            "Give one --input-shape per graph input, in order.",
        )
    specs = []
    for idx, value in enumerate(graph_inputs):
        tensor_type = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise InputShapeError(f"Input {value.name!r} has an unsupported ONNX element type {tensor_type.elem_type}.", "Use float32 or integer inputs.")
        if overrides:
            o = overrides[idx]
            name = value.name if o.name in ("input", f"input_{idx}") else o.name
            if name != value.name:
                raise InputShapeError(f"--input-shape names {o.name!r}, but input {idx} of the graph is {value.name!r}.", "Use the graph's input names.")
            specs.append(InputSpec(name=name, shape=o.shape, dtype=o.dtype))
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if any(d is None or d <= 0 for d in dims):
            shown = ",".join("?" if d is None or d <= 0 else str(d) for d in dims)
            raise InputShapeError(
                f"Input {value.name!r} of {str(path)!r} has dynamic dimensions ({shown}).",
                "Pin them with --input-shape, e.g. --input-shape 1,3,224,224.",
            )
        specs.append(InputSpec(name=value.name, shape=tuple(dims), dtype=dtype))
    return tuple(specs)
