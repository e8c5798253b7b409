"""Tensors and arrays for an input signature."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from repfx_deploy.spec import InputSpec

if TYPE_CHECKING:
    import torch


def random_inputs(specs: tuple[InputSpec, ...], seed: int = 0) -> list[np.ndarray]:
    """Deterministic random arrays for ``specs``: standard normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        if s.dtype.startswith("float"):
            out.append(rng.standard_normal(s.shape).astype(s.dtype))
        elif s.dtype == "bool":
            out.append(rng.integers(0, 2, s.shape).astype(bool))
        else:
            out.append(rng.integers(0, 8, s.shape).astype(s.dtype))
    return out


def zeros_for(specs: tuple[InputSpec, ...]) -> list[torch.Tensor]:
    import torch

    return [torch.from_numpy(np.zeros(s.shape, dtype=s.dtype)) for s in specs]


def to_torch(arrays: list[np.ndarray]) -> list[torch.Tensor]:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
