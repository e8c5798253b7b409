"""The spiking network as one module: ``T`` steps of direct encoding, time-batched, output averaged over steps.

``SpikingNet(x)`` takes the same ``N x ...`` input as the ANN and returns the same ``N x classes`` logits: the
analog input drives the first layer at every step (direct encoding, computed once since it does not change),
the neurons unroll their ``T`` steps (see ``neurons.py``), and the output layer, which has no neuron, integrates
its input current over the steps: the result is the mean of the per-step outputs. Everything is static for a
given ``T``, so torch.export / ONNX see one unrolled graph; ``set_timesteps`` changes ``T`` (IIR stages).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from repfx_deploy.passes.snn.neurons import IFNeuron, SpikeMaxPool, TimeExpand


class SpikingNet(nn.Module):
    """``body``: the converted graph (BN folded, ReLUs replaced by ``IFNeuron``); ``timesteps``: ``T``."""

    def __init__(self, body: nn.Module, timesteps: int) -> None:
        super().__init__()
        self.body = body
        self.timesteps = 1
        self.set_timesteps(timesteps)

    def set_timesteps(self, timesteps: int) -> None:
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.timesteps = int(timesteps)
        for m in self.body.modules():
            if isinstance(m, (IFNeuron, TimeExpand, SpikeMaxPool)):
                m.timesteps = self.timesteps

    def neurons(self) -> list[tuple[str, IFNeuron]]:
        return [(name, m) for name, m in self.body.named_modules() if isinstance(m, IFNeuron)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out.reshape(self.timesteps, -1, *out.shape[1:]).mean(0)
