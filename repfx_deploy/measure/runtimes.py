"""Runners for torch eager and ONNX Runtime (TVM's lives in ``compile.tvm_runtime``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from repfx_deploy.errors import MeasureError
from repfx_deploy.modules import inference_mode

if TYPE_CHECKING:
    import torch.nn as nn

RUNTIMES = ("torch", "onnxruntime", "tvm")


def default_threads() -> int:
    """Threads used when none are asked for: every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TorchRunner:
    """Torch eager inference (``no_grad``, eval mode) with ``threads`` intra-op threads."""

    name = "torch"

    def __init__(self, module: nn.Module, threads: int | None = None) -> None:
        import torch

        self.threads = threads or default_threads()
        torch.set_num_threads(self.threads)
        self._module = inference_mode(module)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            out = self._module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
        return [t.detach().numpy() for t in _flatten(out)]

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], object]:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
        module = self._module

        def call() -> object:
            with torch.no_grad():
                return module(*tensors)

        return call


def _flatten(out: object) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    raise MeasureError(
        f"The model returned a {type(out).__name__}, not tensors.", "Return a tensor or a tuple of tensors."
    )


def session_options(threads: int, optimize: bool):
    """The ONNX Runtime options every session in this project uses: ``threads`` intra-op threads, one inter-op thread, quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return opts


class OrtRunner:
    """ONNX Runtime on the CPU execution provider, full graph optimisation, ``threads`` intra-op threads."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.threads = threads or default_threads()
        try:
            self._session = ort.InferenceSession(
                str(onnx_path), session_options(self.threads, optimize=True), providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise MeasureError(
                f"ONNX Runtime cannot load {str(onnx_path)!r}: {e}", "Check the ONNX file with `repfx-deploy inspect`."
            ) from e
        self._names = [i.name for i in self._session.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(None, dict(zip(self._names, inputs))))

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], object]:
        feed = dict(zip(self._names, [np.ascontiguousarray(a) for a in inputs]))
        session = self._session
        return lambda: session.run(None, feed)
