"""Mixed precision: per-layer int8 / int4 weights / float, chosen by measured sensitivity under a size budget.

Sensitivity of layer L at b bits is the KL divergence between the float model's output distribution and that of
the float model with only L's weight quantized to b bits, on calibration batches (activations stay float here, so
each number isolates the layer's weights). The choice then starts from all int8 and:

- when the budget is below the all-int8 size, moves to int4 the layers that lose least per byte saved;
- when it is above, moves to float the layers that gain most per byte spent, while the budget allows.

Sizes are the weights' packed sizes (int4 at half a byte, an estimate: the ONNX file stores int4 weights in int8
containers, see README) plus one float32 scale per channel. Layers fixed by ``layer_bits`` are not moved. These
per-layer bit widths are the knobs a later search can drive (``choose`` takes any sensitivity table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from repfx_deploy.errors import PassError
from repfx_deploy.passes.quantize.graph import LayerInfo, QuantizedModel
from repfx_deploy.passes.quantize.observers import weight_scales

BYTES_PER_WEIGHT = {"float": 4.0, 8: 1.0, 4: 0.5}


def layer_bytes(layer: LayerInfo, choice: int | str) -> float:
    scales = 0 if choice == "float" else 4 * layer.out_channels
    return layer.weight_numel * BYTES_PER_WEIGHT[choice] + scales


@dataclass(frozen=True)
class Sensitivity:
    name: str
    kl_int8: float
    kl_int4: float

    def to_dict(self) -> dict:
        return {"layer": self.name, "kl_int8": round(self.kl_int8, 6), "kl_int4": round(self.kl_int4, 6)}


def measure_sensitivity(model: QuantizedModel, inputs: list[torch.Tensor], *, weight_method: str) -> list[Sensitivity]:
    """Per-layer KL(float || one layer's weight quantized) at 8 and 4 bits, averaged over ``inputs``."""
    model.set_state(acts="float", weights="float")
    quants = model.weight_quants()
    with torch.no_grad():
        reference = [F.log_softmax(model(x).flatten(1), 1) for x in inputs]
        out = []
        for layer in model.layers:
            if layer.weight_quant is None:
                continue
            wq = quants[layer.weight_quant]
            saved = (wq.bits, wq.qmin, wq.qmax, wq.scale.data.clone())
            kl = {}
            for bits in (8, 4):
                wq.bits, wq.qmin, wq.qmax = bits, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
                wq.scale.data = weight_scales(wq.weight.data, bits, weight_method)
                wq.state = "learn"  # the fake-quant path; no gradients are taken here
                total = 0.0
                for x, ref in zip(inputs, reference):
                    logp = F.log_softmax(model(x).flatten(1), 1)
                    total += float(F.kl_div(logp, ref, log_target=True, reduction="batchmean"))
                kl[bits] = total / len(inputs)
                wq.state = "float"
            wq.bits, wq.qmin, wq.qmax, wq.scale.data = saved
            out.append(Sensitivity(layer.name, kl[8], kl[4]))
    return out


def choose(
    layers: tuple[LayerInfo, ...], sens: list[Sensitivity], budget_bytes: int, fixed: Mapping[str, int | str]
) -> dict[str, int | str]:
    """Per-layer choice within ``budget_bytes`` (see the module docstring); ``PassError`` when it cannot fit."""
    by_name = {s.name: s for s in sens}
    movable = [layer for layer in layers if layer.name in by_name and layer.name not in fixed]
    choice: dict[str, int | str] = {
        layer.name: fixed.get(layer.name, 8) for layer in layers if layer.name in by_name or layer.name in fixed
    }
    info = {layer.name: layer for layer in layers}

    def total() -> float:
        return sum(layer_bytes(info[n], c) for n, c in choice.items())

    if total() > budget_bytes:
        # cheapest loss per byte saved first
        order = sorted(
            movable,
            key=lambda L: (
                (by_name[L.name].kl_int4 - by_name[L.name].kl_int8) / max(1.0, layer_bytes(L, 8) - layer_bytes(L, 4))
            ),
        )
        for layer in order:
            if total() <= budget_bytes:
                break
            choice[layer.name] = 4
        if total() > budget_bytes:
            raise PassError(
                f"quantize: even with every movable layer at int4 the weights take {total():.0f} bytes, over size_budget_bytes = {budget_bytes}.",
                "Raise size_budget_bytes, or remove layer_bits entries that pin layers to 8 bits or float.",
            )
    else:
        # most loss removed per byte spent first
        order = sorted(
            movable, key=lambda L: -by_name[L.name].kl_int8 / max(1.0, layer_bytes(L, "float") - layer_bytes(L, 8))
        )
        for layer in order:
            extra = layer_bytes(layer, "float") - layer_bytes(layer, 8)
            if by_name[layer.name].kl_int8 > 0 and total() + extra <= budget_bytes:
                choice[layer.name] = "float"
    return choice
