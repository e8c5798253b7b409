"""Integrate-and-fire neurons for time-batched simulation, with reset by subtraction and surrogate gradients.

A neuron sees the input current of all ``T`` timesteps at once, stacked on the batch dimension (``T*N x ...``,
step-major), runs the membrane recursion over the steps (a Python loop, so a traced or exported graph has the
steps unrolled and static) and returns its spikes in the same layout. Layers between neurons are stateless
(convolutions, pooling, adds), so they run once on the whole ``T*N`` batch instead of once per step.

Per step ``t``::

    v = leak * v + x[t]
    s = H(v - threshold)          # a spike when the membrane reaches the threshold
    v = v - s * threshold         # reset by subtraction keeps the surplus (less error than reset to zero)
    out[t] = s * threshold

The output is ``threshold`` times the spike, so the next layer's weights need no rescaling; since the
threshold is one scalar per layer it can be folded into those weights on hardware, which then only accumulates.
The membrane starts at ``initial_membrane * threshold`` (half the threshold by default: rounding instead of
flooring the rate, which halves the conversion error at small ``T``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

Surrogate = Literal["triangle", "sigmoid", "atan"]
SURROGATES = ("triangle", "sigmoid", "atan")


class _Spike(torch.autograd.Function):
    """Heaviside step forward; a smooth stand-in derivative backward (the true one is zero almost everywhere)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, width: torch.Tensor, kind: str) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.width, ctx.kind = width, kind
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (u,) = ctx.saved_tensors
        w = ctx.width
        if ctx.kind == "triangle":
            d = (1.0 - u.abs() / w).clamp_min(0.0) / w
        elif ctx.kind == "sigmoid":
            sig = torch.sigmoid(4.0 * u / w)
            d = 4.0 / w * sig * (1.0 - sig)
        else:  # atan
            d = 1.0 / (w * (1.0 + (torch.pi * u / w) ** 2))
        return grad * d, None, None


def spike(u: torch.Tensor, width: torch.Tensor, kind: str) -> torch.Tensor:
    """``H(u)``; differentiable through the surrogate when gradients are wanted, a plain comparison otherwise
    (so torch.export/ONNX see ordinary ops)."""
    if torch.is_grad_enabled() and u.requires_grad:
        return _Spike.apply(u, width, kind)
    return (u >= 0).to(u.dtype)


class IFNeuron(nn.Module):
    """An integrate-and-fire layer (leaky when ``leak`` < 1) with a learnable scalar threshold and leak.

    ``constant_input``: the input is the same at every step (direct encoding: the layers before the first
    neurons see the analog image) and arrives as ``N x ...`` once; the output is still ``T*N x ...``.
    ``timesteps`` is set by the owning ``SpikingNet`` so that all neurons agree.
    """

    def __init__(
        self,
        threshold: float,
        *,
        timesteps: int = 1,
        leak: float = 1.0,
        learn_threshold: bool = True,
        learn_leak: bool = True,
        initial_membrane: float = 0.5,
        surrogate: Surrogate = "triangle",
        constant_input: bool = False,
    ) -> None:
        super().__init__()
        if not threshold > 0:
            raise ValueError(f"IFNeuron threshold must be positive, got {threshold}")
        if surrogate not in SURROGATES:
            raise ValueError(f"IFNeuron surrogate must be one of {SURROGATES}, got {surrogate!r}")
        self.threshold = nn.Parameter(torch.tensor(float(threshold)), requires_grad=learn_threshold)
        self.leak = nn.Parameter(torch.tensor(float(leak)), requires_grad=learn_leak)
        self.timesteps = int(timesteps)
        self.initial_membrane = float(initial_membrane)
        self.surrogate = surrogate
        self.constant_input = constant_input

    def extra_repr(self) -> str:
        return (
            f"threshold={float(self.threshold.detach()):.4g}, leak={float(self.leak.detach()):.4g}, T={self.timesteps}, "
            f"constant_input={self.constant_input}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.timesteps
        # a threshold driven to <= 0 by training would fire on silence; keep it positive
        thr = self.threshold.clamp_min(1e-4)
        leak = self.leak.clamp(0.0, 1.0)
        # the surrogate's support scales with the threshold, so its shape is the same at every layer's scale
        width = thr.detach()
        steps = [x] * T if self.constant_input else list(x.reshape(T, -1, *x.shape[1:]).unbind(0))
        v = torch.full_like(steps[0], 0.0) + self.initial_membrane * thr
        out = []
        for current in steps:
            v = leak * v + current
            s = spike(v - thr, width, self.surrogate)
            v = v - s * thr
            out.append(s * thr)
        return torch.cat(out, 0)


class TimeExpand(nn.Module):
    """Repeats a step-independent tensor (``N x ...``) over the ``T`` steps (``T*N x ...``), where it meets a
    time-batched one (e.g. a skip connection from the input around the first neurons)."""

    def __init__(self, timesteps: int = 1) -> None:
        super().__init__()
        self.timesteps = int(timesteps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(self.timesteps, *([1] * (x.dim() - 1)))


class SpikeMaxPool(nn.Module):
    """Max-pooling of spike trains by spike count: step ``t`` emits ``pool(C_t) - pool(C_{t-1})``, where ``C_t``
    is each input's spike count (times threshold) up to step ``t``.

    The outputs sum to ``pool(C_T)``: the rate of the most active input of each window, which is what the ANN's
    max-pool gives. Counts grow by 0 or one threshold per step, so the difference of maxima is again 0 or one
    threshold: a spike. Pooling the spikes themselves instead (an OR over the window) overestimates the rate.
    """

    def __init__(self, pool: nn.Module, timesteps: int = 1) -> None:
        super().__init__()
        self.pool = pool
        self.timesteps = int(timesteps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.reshape(self.timesteps, -1, *x.shape[1:]).unbind(0)
        count = torch.zeros_like(steps[0])
        previous = None
        out = []
        for s in steps:
            count = count + s
            m = self.pool(count)
            out.append(m if previous is None else m - previous)
            previous = m
        return torch.cat(out, 0)
