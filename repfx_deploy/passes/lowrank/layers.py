"""Which layers can be factorized, and the shapes their costs depend on (measured in one forward pass)."""

from __future__ import annotations

import fnmatch

import torch
import torch.nn as nn

from repfx_deploy.passes.lowrank.factorize import LayerShape


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """``name`` matches a pattern exactly, as a glob, or as a prefix of a submodule path (``layer1`` covers
    ``layer1.0.conv1``): the same rule as the prune pass's ``ignore``."""
    return any(name == p or fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def factorizable(module: nn.Module) -> bool:
    """``nn.Linear`` and ungrouped, zero-padded ``nn.Conv2d`` with numeric padding."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def find_layers(
    model: nn.Module, example: tuple[torch.Tensor, ...], ignore: tuple[str, ...] = ()
) -> dict[str, LayerShape]:
    """Every factorizable layer that ``model(*example)`` calls and ``ignore`` does not name, with its shape.

    Costs are per call of the model on ``example`` (the same unit as ``analyze.torch_stats``); a layer called
    several times in one forward has the positions of all its calls added up. A layer whose weight is read
    directly instead of being called (e.g. inside a fused attention) is never called, so it is not offered.
    """
    seen: dict[str, LayerShape] = {}
    hooks = []

    def record(name: str):
        def hook(module, inputs, output):
            x = inputs[0]
            if isinstance(module, nn.Linear):
                shape = LayerShape(
                    "linear",
                    module.in_features,
                    module.out_features,
                    bias=module.bias is not None,
                    positions=output.numel() // module.out_features,
                )
            else:
                kh, kw = module.kernel_size
                n, _, ho, wo = output.shape
                shape = LayerShape(
                    "conv",
                    module.in_channels,
                    module.out_channels,
                    kh,
                    kw,
                    module.bias is not None,
                    positions=n * ho * wo,
                    mid_positions=n * ho * x.shape[-1],
                )
            if name in seen:
                old = seen[name]
                shape = LayerShape(
                    old.kind,
                    old.cin,
                    old.cout,
                    old.kh,
                    old.kw,
                    old.bias,
                    old.positions + shape.positions,
                    old.mid_positions + shape.mid_positions,
                )
            seen[name] = shape

        return hook

    for name, module in model.named_modules():
        if name and factorizable(module) and not matches(name, ignore):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return {name: seen[name] for name, _ in model.named_modules() if name in seen}


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the submodule at dotted ``name`` with ``new``; returns the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
