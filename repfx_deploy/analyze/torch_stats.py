"""Parameters, size and MACs of a torch model.

MACs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts at the ATen level and so sees
convolutions, linears, functional matmuls and attention alike (one MAC = two FLOPs). Each layer is credited
with the MACs of its own forward, excluding those of its child modules, so layers add up to the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from repfx_deploy.modules import inference_mode
from repfx_deploy.spec import InputSpec

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True)
class LayerStats:
    name: str
    kind: str
    macs: int
    params: int

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.kind, "macs": self.macs, "params": self.params}


@dataclass(frozen=True)
class ModelStats:
    params: int
    size_bytes: int
    macs: int
    layers: tuple[LayerStats, ...] = field(default=())
    inputs: tuple[dict, ...] = ()
    outputs: tuple[dict, ...] = ()

    def to_dict(self, *, layers: bool = True) -> dict:
        d = {
            "params": self.params,
            "size_bytes": self.size_bytes,
            "macs": self.macs,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
        }
        if layers:
            d["layers"] = [layer.to_dict() for layer in self.layers]
        return d


def param_count(module: nn.Module, recurse: bool = True) -> int:
    """How many parameters ``module`` holds (with ``recurse=False``: only its own, not its children's)."""
    return sum(p.numel() for p in module.parameters(recurse=recurse))


def _own_params(module: nn.Module) -> int:
    return param_count(module, recurse=False)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(Q K^T) V for (batch, heads, length, dim) shapes: two batched matmuls."""
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


def _custom_flop_formulas() -> dict:
    """Formulas FlopCounterMode lacks: the CPU build's fused attention kernel (it knows only the GPU ones)."""
    import torch

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_cpu_flops} if op is not None else {}


def _nearest_counted_descendants(name: str, counted: dict[str, int]) -> list[str]:
    """Counted modules under ``name`` with no counted module between them and it.

    Containers whose own forward never runs (a ModuleList, a plain holder module) are absent from the
    counter, so a counted module's nearest counted descendants may be grandchildren or deeper.
    """
    below = [k for k in counted if k.startswith(name + ".")]
    return [k for k in below if not any(k.startswith(j + ".") for j in below if j != k)]


def torch_stats(module: nn.Module, specs: tuple[InputSpec, ...]) -> ModelStats:
    """Count parameters, bytes of parameters and buffers, and MACs for one call on inputs of ``specs``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from repfx_deploy.data.tensors import zeros_for
    from repfx_deploy.measure.runtimes import _flatten

    module = inference_mode(module)
    params = param_count(module)
    size_bytes = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    counter = FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas())
    # With grad enabled, MultiheadAttention and TransformerEncoderLayer take their composite path instead of the
    # fused inference kernel, which FlopCounterMode cannot see into.
    with torch.enable_grad(), counter:
        out = module(*zeros_for(specs))
    out = [t.detach() for t in _flatten(out)]
    inclusive = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items() if name != "Global"}
    total = sum(counter.get_flop_counts().get("Global", {}).values()) // 2
    root = type(module).__name__
    named = dict(module.named_modules())
    layers = []
    for full, macs in inclusive.items():
        name = "" if full == root else full.removeprefix(root + ".")
        own = macs - sum(inclusive[k] for k in _nearest_counted_descendants(full, inclusive))
        if own <= 0:
            continue
        sub = named.get(name)
        layers.append(
            LayerStats(
                name=name or "(top level)",
                kind=type(sub).__name__ if sub is not None else "?",
                macs=own,
                params=_own_params(sub) if sub is not None else 0,
            )
        )
    # Layers with parameters but no MACs (BatchNorm, LayerNorm, embeddings) still matter for size.
    seen = {layer.name for layer in layers}
    for name, sub in named.items():
        if name and name not in seen and _own_params(sub) > 0:
            layers.append(LayerStats(name=name, kind=type(sub).__name__, macs=0, params=_own_params(sub)))
    order = {name: i for i, name in enumerate(named)}
    layers.sort(key=lambda layer: order.get(layer.name, -1))
    outputs = tuple(
        {"name": f"output_{i}", "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for i, t in enumerate(out)
    )
    return ModelStats(
        params=params,
        size_bytes=size_bytes,
        macs=total,
        layers=tuple(layers),
        inputs=tuple(s.to_dict() for s in specs),
        outputs=outputs,
    )
