"""Reading an ONNX model for TVM: its inputs and outputs, and the Relax import with clear errors."""

from __future__ import annotations

from pathlib import Path

from repfx_deploy.errors import CompileError, ModelLoadError
from repfx_deploy.spec import InputSpec

# At opset 23 the exporter emits ONNX Attention, which the 0.27 importer cannot take (KeyError 'num_heads').
MAX_SAFE_OPSET = 20


def load_onnx(onnx_path: Path):
    """Read an ONNX model with its external data; a missing or corrupt file raises ``ModelLoadError``."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelLoadError(
            f"ONNX file {str(onnx_path)!r} does not exist.", "Check the path, or lower the model first."
        )
    try:
        return onnx.load(str(onnx_path))
    except Exception as e:  # protobuf raises several unrelated types for a bad file
        raise ModelLoadError(f"Cannot read {str(onnx_path)!r} as ONNX: {e}", "Re-export the model.") from e


def onnx_opset(model) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def import_onnx(model, inputs: tuple[InputSpec, ...]):
    """ONNX -> Relax IRModule with weights as constants. Operators TVM cannot import raise ``CompileError``."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | {"If", "Constant"}
    op_types = sorted({n.op_type for n in model.graph.node})
    missing = [op for op in op_types if op not in supported]
    opset = onnx_opset(model)
    if missing:
        raise CompileError(
            f"TVM {tvm.__version__} cannot import these ONNX operators: {', '.join(missing)}.",
            _fix_for(missing, opset),
        )
    try:
        return from_onnx(
            model,
            shape_dict={s.name: list(s.shape) for s in inputs},
            dtype_dict={s.name: s.dtype for s in inputs},
            keep_params_in_input=False,
        )
    except Exception as e:  # the importer raises KeyError/ValueError/NotImplementedError/TVMError alike
        raise CompileError(
            f"TVM's ONNX importer failed on this model (opset {opset}, operators {', '.join(op_types)}): "
            f"{type(e).__name__}: {e}",
            _fix_for(op_types, opset),
        ) from e


def _fix_for(ops: list[str], opset: int) -> str:
    if any(op.startswith("QLinear") or op in ("QGemm", "ConvInteger", "MatMulInteger") for op in ops):
        return "TVM does not take QOperator-format quantized models; export a float or QDQ model instead."
    if opset > MAX_SAFE_OPSET:
        return f"Export at opset {MAX_SAFE_OPSET} or lower (opset {opset} emits operators TVM 0.27 cannot import)."
    return "Replace or decompose the operator in the model before export, or keep this model on ONNX Runtime."


def output_specs(mod, model) -> list[dict]:
    from tvm import relax

    ret = mod["main"].ret_ty
    names = [o.name for o in model.graph.output]
    tys = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret] if ret is not None else []
    out = []
    for i, name in enumerate(names):
        ty = tys[i] if i < len(tys) else None
        shape = [int(d) for d in ty.shape] if ty is not None and getattr(ty, "shape", None) is not None else None
        out.append({"name": name, "shape": shape, "dtype": str(getattr(ty, "dtype", "float32"))})
    return out
