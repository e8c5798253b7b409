"""Threshold balancing: each neuron layer's threshold is a high percentile of the ANN activation it replaces.

The maximum activation seen in calibration is set by a handful of outliers; a threshold that high makes every
other input need many steps to fire. A high percentile (99.9 by default, Rueckauer et al. 2017) clips those few
outliers and lets the bulk fire at a useful rate. The percentile is taken over the positive activations only:
the zeros of a ReLU carry no information about the scale, and their share differs a lot between layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# values kept per layer and batch: torch.quantile takes at most 16 M values, and 200 k already pin a 99.9th
# percentile to within a fraction of a percent
_KEEP_PER_BATCH = 200_000


class ActivationProbe(nn.Module):
    """A ReLU that, while ``collecting``, keeps a random sample of its positive outputs."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.collecting = False
        self.samples: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        if self.collecting:
            positive = y.detach().flatten()
            positive = positive[positive > 0].float().cpu()
            if positive.numel() > _KEEP_PER_BATCH:
                pick = torch.randperm(positive.numel(), generator=self._generator)[:_KEEP_PER_BATCH]
                positive = positive[pick]
            self.samples.append(positive)
        return y

    def threshold(self, percentile: float) -> float:
        """The ``percentile`` (0-100] of the collected positive activations; 1.0 for a layer that never fired
        on the calibration data (it then has no scale to match, and any positive value is as good)."""
        if not self.samples:
            return 1.0
        values = torch.cat(self.samples)
        if values.numel() == 0:
            return 1.0
        if values.numel() > 16_000_000:
            values = values[torch.randperm(values.numel(), generator=self._generator)[:16_000_000]]
        if percentile >= 100.0:
            return float(values.max())
        return float(torch.quantile(values, percentile / 100.0))


@torch.no_grad()
def calibrate(
    module: nn.Module, probes: list[ActivationProbe], batches: list[torch.Tensor], percentile: float
) -> list[float]:
    """Run ``module`` on ``batches`` with ``probes`` collecting; returns each probe's threshold in order."""
    for p in probes:
        p.collecting, p.samples = True, []
    try:
        for xb in batches:
            module(xb)
        return [p.threshold(percentile) for p in probes]
    finally:
        for p in probes:
            p.collecting, p.samples = False, []
