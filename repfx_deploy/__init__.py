"""repfx-deploy: compress a trained PyTorch model, lower it to ONNX, compile it with TVM, measure it, report it.

The package is laid out as the pipeline runs:

    ingest -> passes -> lower (ONNX) -> compile (TVM) -> measure -> report

Heavy dependencies (torch, onnx, onnxruntime, tvm) are imported inside the modules that need them, so
``import repfx_deploy`` and ``repfx-deploy --help`` stay fast.
"""

__version__ = "0.1.0"

from repfx_deploy.errors import RepfxError

__all__ = ["RepfxError", "__version__"]
