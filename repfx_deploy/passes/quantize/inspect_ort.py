"""Which kernels ONNX Runtime really runs for a model: its optimized graph, read back.

ONNX Runtime rewrites ``DQ -> op -> Q`` groups into integer operators when it can, and leaves the rest as
dequantize -> float op. Saving the session's optimized model (``SessionOptions.optimized_model_filepath``) and
counting operator types tells which happened, per run, on this CPU and ORT version.
"""

from __future__ import annotations

import collections
import tempfile
from dataclasses import dataclass
from pathlib import Path

# ONNX Runtime operators that compute in integers (ai.onnx and com.microsoft domains)
INT8_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "NhwcQLinearConv",
        "QAttention",
    }
)
# float operators that carry most of a network's arithmetic: if these remain, that part did not run in int8
FLOAT_COMPUTE_OPS = frozenset({"Conv", "FusedConv", "NchwcConv", "Gemm", "MatMul", "FusedMatMul", "FusedGemm"})


@dataclass(frozen=True)
class OrtKernels:
    """Operator counts of ONNX Runtime's optimized graph, split into integer and float compute."""

    int8_ops: dict[str, int]
    float_compute_ops: dict[str, int]
    all_ops: dict[str, int]

    @property
    def runs_int8(self) -> bool:
        return bool(self.int8_ops)

    def to_dict(self) -> dict:
        return {
            "runs_int8": self.runs_int8,
            "int8_ops": self.int8_ops,
            "float_compute_ops": self.float_compute_ops,
            "all_ops": self.all_ops,
        }


def ort_kernels(onnx_path: Path, threads: int = 1) -> OrtKernels:
    """Build an ONNX Runtime CPU session for ``onnx_path`` with full optimization and count its operators."""
    import onnx
    import onnxruntime as ort

    from repfx_deploy.measure.runtimes import session_options

    with tempfile.TemporaryDirectory(prefix="repfx-ort-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        opts = session_options(threads, optimize=True)
        opts.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized), load_external_data=False).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return OrtKernels(
        int8_ops={k: v for k, v in sorted(counts.items()) if k in INT8_OPS},
        float_compute_ops={k: v for k, v in sorted(counts.items()) if k in FLOAT_COMPUTE_OPS},
        all_ops=dict(sorted(counts.items())),
    )
