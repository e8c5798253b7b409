"""What the spiking network costs: spike rates per neuron layer, synaptic operations against the ANN's MACs,
and an ENERGY ESTIMATE from per-operation energies (never a measurement).

Operation counts, per sample, measured on real inputs with forward hooks on every conv/linear layer:

- a layer whose input is spikes (zero or one nonzero value, the threshold) does accumulates only: one per
  nonzero input and connection, counted as ``MACs per step x input density x steps`` (exact for linear layers;
  for convolutions the zero padding makes it a slight overestimate at the borders);
- a layer whose input is analog (the image under direct encoding, computed once since it is the same at every
  step; an average-pooled spike map before the classifier) does full multiply-accumulates, per pass.

The energy estimate multiplies those counts by ``energy_mac_pj`` / ``energy_ac_pj`` (default 4.6 / 0.9 pJ:
32-bit float multiply-add and add at 45 nm, Horowitz 2014). It counts arithmetic only: memory traffic,
membrane updates and residual adds are left out, for the ANN and the SNN alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from repfx_deploy.passes.snn.neurons import IFNeuron
from repfx_deploy.passes.snn.simulate import SpikingNet

_SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_Synaptic = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear


def _macs_per_pass(layer: _Synaptic, out: torch.Tensor) -> float:
    """Multiply-accumulates per sample for one pass of ``layer`` (one step of a time-batched input)."""
    per_sample_outputs = out.numel() / out.shape[0]
    if isinstance(layer, nn.Linear):
        return per_sample_outputs * layer.in_features
    k = 1
    for s in layer.kernel_size:
        k *= s
    return per_sample_outputs * (layer.in_channels // layer.groups) * k


@torch.no_grad()
def spike_stats(
    snn: SpikingNet, batches: Sequence[torch.Tensor], *, energy_mac_pj: float = 4.6, energy_ac_pj: float = 0.9
) -> dict[str, Any]:
    """Spike rates, operation counts and the energy estimate of ``snn`` at its current T, on ``batches``."""
    T = snn.timesteps
    rates: dict[str, list[float]] = {}
    layers: dict[str, dict[str, float]] = {}
    state = {"n": 0}
    hooks = []

    def neuron_hook(name):
        def hook(mod, inp, out):
            entry = rates.setdefault(name, [0.0, 0.0])
            entry[0] += float((out != 0).sum())
            entry[1] += out.numel()

        return hook

    def layer_hook(name):
        def hook(mod, inp, out):
            x = inp[0]
            n = state["n"]
            passes = x.shape[0] / n
            nonzero = x[x != 0]
            # spikes carry one value, the threshold (up to float rounding: a spiking max-pool emits differences
            # of summed thresholds)
            spikes = nonzero.numel() == 0 or bool(
                torch.allclose(nonzero, nonzero[0].expand_as(nonzero), rtol=1e-4, atol=0.0)
            )
            density = nonzero.numel() / x.numel()
            macs = _macs_per_pass(mod, out)
            e = layers.setdefault(
                name,
                {"ann_macs": 0.0, "mac_ops": 0.0, "ac_ops": 0.0, "density": 0.0, "batches": 0, "spike_input": True},
            )
            e["ann_macs"] += macs * n
            e["spike_input"] = e["spike_input"] and spikes
            if spikes:
                e["ac_ops"] += macs * passes * density * n
            else:
                e["mac_ops"] += macs * passes * n
            e["density"] += density
            e["batches"] += 1

        return hook

    for name, m in snn.body.named_modules():
        if isinstance(m, IFNeuron):
            hooks.append(m.register_forward_hook(neuron_hook(name)))
        elif isinstance(m, _SYNAPTIC):
            hooks.append(m.register_forward_hook(layer_hook(name)))
    was_training = snn.training
    snn.eval()
    total = 0
    try:
        for xb in batches:
            state["n"] = int(xb.shape[0])
            total += state["n"]
            snn(xb)
    finally:
        for h in hooks:
            h.remove()
        snn.train(was_training)
    if total == 0:
        raise ValueError("spike_stats needs at least one sample")

    per_layer = []
    ann_macs = mac_ops = ac_ops = 0.0
    for name, e in layers.items():
        ann_macs += e["ann_macs"] / total
        mac_ops += e["mac_ops"] / total
        ac_ops += e["ac_ops"] / total
        per_layer.append(
            {
                "layer": name,
                "input": "spikes" if e["spike_input"] else "analog",
                "input_density_per_step": round(e["density"] / e["batches"], 6),
                "ann_macs": round(e["ann_macs"] / total),
                "snn_mac_ops": round(e["mac_ops"] / total),
                "snn_ac_ops": round(e["ac_ops"] / total),
            }
        )
    ann_pj = ann_macs * energy_mac_pj
    snn_pj = mac_ops * energy_mac_pj + ac_ops * energy_ac_pj
    return {
        "timesteps": T,
        "samples": total,
        "spike_rates": {name: round(s / max(c, 1.0), 6) for name, (s, c) in rates.items()},
        "mean_spike_rate": round(sum(s for s, _ in rates.values()) / max(sum(c for _, c in rates.values()), 1.0), 6),
        "layers": per_layer,
        "ann_macs": round(ann_macs),
        "snn_mac_ops": round(mac_ops),
        "snn_ac_ops": round(ac_ops),
        "snn_synaptic_ops": round(mac_ops + ac_ops),
        "energy_estimate": {
            "is_estimate": True,
            "method": f"operation counts x per-operation energy ({energy_mac_pj} pJ/MAC, {energy_ac_pj} pJ/accumulate); "
            "arithmetic only, no memory traffic, membrane updates or residual adds",
            "ann_pj": round(ann_pj, 1),
            "snn_pj": round(snn_pj, 1),
            "snn_over_ann": round(snn_pj / ann_pj, 4) if ann_pj else None,
        },
    }
