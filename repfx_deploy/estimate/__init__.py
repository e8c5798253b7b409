"""Latency estimates for a device that cannot be reached: per-layer lookup tables and an analytic model.

``estimate_latency(model, input_specs, profile)`` is the entry point (see ``model.py``). Heavy imports (onnx,
onnxruntime, torch) happen inside the functions that need them.
"""

from repfx_deploy.estimate.model import Estimate, LayerEstimate, estimate_latency

__all__ = ["Estimate", "LayerEstimate", "estimate_latency"]
