"""Fake-quantization modules that export to ONNX QuantizeLinear/DequantizeLinear.

``ActQuant`` quantizes an activation per tensor to uint8 (asymmetric; with ``relu=True`` its range starts at 0,
so it also does the ReLU it replaced, as ONNX Runtime's own quantizer folds ReLU into the preceding Q).
``WeightQuant`` owns a layer's weight and quantizes it per output channel, symmetric int8 (zero point 0, which
ONNX Runtime's u8s8 VNNI kernels need); int4 weights use 16 of those levels, still stored as int8.

Each has three states, set by the pass, never by ``train()``/``eval()`` of the model:
``observe`` (records statistics, passes floats through), ``learn`` (LSQ: scale and weight trainable, gradients by
the straight-through estimator) and ``frozen`` (deployment: the activation path uses
``torch.fake_quantize_per_tensor_affine`` with constant qparams and the weight is an int8 buffer dequantized by
``quantized_decomposed.dequantize_per_channel``, which the dynamo exporter writes as an int8 initializer plus
DequantizeLinear, so the ONNX file holds 1 byte per weight).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
import torch.nn as nn
import torch.nn.functional as F

from repfx_deploy.passes.quantize.observers import (
    HistogramObserver,
    activation_qparams,
    weight_scales,
)

State = Literal["float", "observe", "learn", "frozen"]


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return (x.round() - x).detach() + x


def _grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x forward, gradient times ``factor`` backward: LSQ scales the step size's gradient by 1/sqrt(N * qmax)."""
    return (x - x * factor).detach() + x * factor


def lsq_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, grad_factor: float
) -> torch.Tensor:
    """Learned step size quantization (Esser et al. 2020): differentiable in ``x`` and ``scale``."""
    s = _grad_scale(scale, grad_factor)
    q = torch.clamp(_round_ste(x / s) + zero_point, qmin, qmax)
    return (q - zero_point) * s


class ProbeSums:
    """Per-channel sums of a layer's output (channels at dim 1 for 4-D conv outputs, last dim otherwise)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        dim = 1 if x.dim() == 4 else x.dim() - 1
        others = tuple(d for d in range(x.dim()) if d != dim)
        # summed in float64 in place of a transposed float64 copy: the same sums, a few times faster
        total = x.sum(dim=others, dtype=torch.float64) if others else x.double()
        self.total = total if self.total is None else self.total + total
        self.count += x.numel() // x.shape[dim]

    @property
    def mean(self) -> torch.Tensor:
        assert self.total is not None
        return self.total / max(1, self.count)


class ActQuant(nn.Module):
    """Per-tensor uint8 fake quantization of one activation (see the module docstring)."""

    qmin, qmax = 0, 255
    # declared for the type checker: ``source`` bypasses nn.Module's registry (see __init__), and ``zero_point``
    # is a buffer, which nn.Module's __getattr__ would otherwise type as a Tensor or Module
    source: ActQuant | None
    zero_point: torch.Tensor

    def __init__(
        self,
        *,
        relu: bool = False,
        method: str = "mse",
        percentile: float = 99.99,
        source: ActQuant | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__()
        self.relu = relu
        # the captured graph's node whose value this quantizer observes (see graph.observed_nodes)
        self.key = key
        # a mirror re-quantizes values already on ``source``'s grid (after a reshape, slice, ...) with its qparams;
        # kept out of the module tree so its parameters are not registered twice
        object.__setattr__(self, "source", source)
        self.method = method
        self.percentile = percentile
        self.state: State = "float"
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.observer = HistogramObserver()
        # constants baked into the exported graph; refreshed by freeze()
        self._scale_f, self._zp_i = 1.0, 0
        # bias correction: per-channel sums of this quantizer's input (the layer output), when switched on
        self.probe: ProbeSums | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probe is not None:
            self.probe.add(x.detach())
        if self.source is not None and self.state == "learn":
            return self.source._learned(x)
        if self.state == "frozen":
            return torch.fake_quantize_per_tensor_affine(x, self._scale_f, self._zp_i, self.qmin, self.qmax)
        if self.state == "learn":
            return self._learned(x)
        y = F.relu(x) if self.relu else x
        if self.state == "observe" and self.source is None:
            self.observer.update(y.detach())
        return y

    def _learned(self, x: torch.Tensor) -> torch.Tensor:
        factor = 1.0 / math.sqrt(max(1, x[0].numel()) * self.qmax)
        # torch's fused kernel computes the same LSQ gradients as ``lsq_quantize``, about 3x faster
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, self.scale.view(1), self.zero_point.view(1), self.qmin, self.qmax, factor
        )

    def calibrate(self, qparams: tuple[float, int] | None = None) -> None:
        """Set scale and zero point: ``qparams`` when given (measured once for the value this quantizer sees),
        else from what its own observer saw, by ``method``; a mirror copies its source's."""
        if self.source is not None:
            self.scale.data.copy_(self.source.scale.data)
            self.zero_point.copy_(self.source.zero_point)
            return
        if qparams is None:
            qparams = activation_qparams(self.observer, self.method, self.percentile, relu=self.relu, qmax=self.qmax)
        self.scale.data.fill_(qparams[0])
        self.zero_point.fill_(qparams[1])

    def freeze(self) -> None:
        if self.source is not None:
            self.scale.data.copy_(self.source.scale.data)
            self.zero_point.copy_(self.source.zero_point)
        self._scale_f = float(self.scale.detach().abs().clamp_min(1e-8))
        self._zp_i = int(self.zero_point.round().clamp(self.qmin, self.qmax))
        self.zero_point.fill_(self._zp_i)
        self.state = "frozen"

    def extra_repr(self) -> str:
        return f"state={self.state}, relu={self.relu}, scale={self._scale_f:.4g}, zero_point={self._zp_i}"


class WeightQuant(nn.Module):
    """Owns one layer's weight (output channels first) and returns it per-channel fake-quantized."""

    # buffers (registered in __init__), declared for the type checker
    weight_int: torch.Tensor
    zero_point: torch.Tensor

    def __init__(
        self, weight: torch.Tensor, *, bits: int = 8, method: str = "mse", scale: torch.Tensor | None = None
    ) -> None:
        """``scale``: the per-channel scales ``weight_scales(weight, bits, method)`` gives, when already known."""
        super().__init__()
        self.bits = bits
        # symmetric, zero point 0; int4 uses [-8, 7] inside the int8 container
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        scale = weight_scales(self.weight.data, bits, method) if scale is None else scale.detach().clone()
        self.scale = nn.Parameter(scale, requires_grad=False)
        self.register_buffer("weight_int", torch.zeros(weight.shape, dtype=torch.int8))
        self.register_buffer("zero_point", torch.zeros(weight.shape[0], dtype=torch.int64))
        self.state: State = "learn"

    def _scale_view(self) -> torch.Tensor:
        return self.scale.view(-1, *([1] * (self.weight.dim() - 1)))

    def forward(self) -> torch.Tensor:
        if self.state == "frozen":
            return torch.ops.quantized_decomposed.dequantize_per_channel(
                self.weight_int, self.scale, self.zero_point, 0, -128, 127, torch.int8
            )
        if self.state == "float":
            return self.weight
        factor = 1.0 / math.sqrt(self.weight[0].numel() * self.qmax)
        return torch._fake_quantize_learnable_per_channel_affine(
            self.weight, self.scale, self.zero_point.float(), 0, self.qmin, self.qmax, factor
        )

    def quantized_float(self) -> torch.Tensor:
        """The weight on its integer grid, in float (what ``frozen`` computes with)."""
        with torch.no_grad():
            s = self._scale_view().abs().clamp_min(1e-12)
            return torch.clamp(torch.round(self.weight / s), self.qmin, self.qmax) * s

    def freeze(self) -> None:
        with torch.no_grad():
            self.scale.data = self.scale.data.abs().clamp_min(1e-12)
            q = torch.clamp(torch.round(self.weight / self._scale_view()), self.qmin, self.qmax)
            self.weight_int.copy_(q.to(torch.int8))
        self.state = "frozen"

    @property
    def packed_bytes(self) -> float:
        """Bytes of the weight at its bit width if packed (int4: two per byte), plus a float32 scale per channel."""
        return self.weight.numel() * self.bits / 8 + 4 * self.weight.shape[0]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, shape={tuple(self.weight.shape)}, state={self.state}"
