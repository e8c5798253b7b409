"""Range estimation: how a float range becomes a scale and zero point.

Activations are observed in two passes over the calibration data: the first finds min and max, the second
fills a 2048-bin histogram over that range (the range is fixed, so batches add up exactly). From it:

- ``minmax``: the whole observed range (no clipping; one outlier can waste most of the 256 levels);
- ``percentile``: clip at the given percentile of the values (and at 100 - p below zero);
- ``mse``: the clipping range with the least expected squared error, rounding plus clipping, over the histogram.

Weights are per output channel, symmetric: ``minmax`` takes max |w|; ``mse`` searches clipping ratios per channel.
"""

from __future__ import annotations

import torch

BINS = 2048


class HistogramObserver:
    """Min/max in phase ``range``, then a fixed-range histogram in phase ``hist``."""

    def __init__(self) -> None:
        self.phase = "range"
        self.min = float("inf")
        self.max = float("-inf")
        self.hist: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.float()
        if self.phase == "range":
            self.min = min(self.min, float(x.min()))
            self.max = max(self.max, float(x.max()))
        else:
            lo, hi = self.range
            h = torch.histc(x.clamp(lo, hi), bins=BINS, min=lo, max=hi)
            self.hist = h if self.hist is None else self.hist + h
        self.count += x.numel()

    @property
    def seen(self) -> bool:
        return self.min <= self.max

    @property
    def range(self) -> tuple[float, float]:
        """The observed range widened to include 0 (zero must be exact: padding and ReLU produce it)."""
        lo, hi = min(self.min, 0.0), max(self.max, 0.0)
        if hi - lo < 1e-8:
            hi = lo + 1e-8
        return lo, hi

    def start_histogram(self) -> None:
        self.phase = "hist"
        self.hist = None

    def centers(self) -> torch.Tensor:
        lo, hi = self.range
        width = (hi - lo) / BINS
        return lo + width * (torch.arange(BINS, dtype=torch.float64) + 0.5)


def _qparams(lo: float, hi: float, qmax: int) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / qmax, 1e-8)
    return scale, int(min(qmax, max(0, round(-lo / scale))))


def activation_qparams(
    observer: HistogramObserver, method: str, percentile: float, *, relu: bool, qmax: int = 255
) -> tuple[float, int]:
    """(scale, zero point) for an asymmetric ``[0, qmax]`` quantizer of what ``observer`` saw."""
    if not observer.seen:
        raise ValueError("the observer saw no data")
    lo, hi = observer.range
    if relu:
        lo = 0.0
    if method == "minmax" or observer.hist is None:
        return _qparams(lo, hi, qmax)
    hist = observer.hist.double()
    centers = observer.centers()
    if method == "percentile":
        cdf = torch.cumsum(hist, 0) / hist.sum().clamp_min(1)

        def at(fraction: float) -> float:
            """The bin center where the cumulative histogram reaches ``fraction``."""
            i = torch.searchsorted(cdf, torch.tensor(fraction, dtype=torch.float64)).clamp(max=BINS - 1)
            return float(centers[int(i)])

        top, bottom = at(percentile / 100), at(1 - percentile / 100)
        return _qparams(min(bottom, 0.0) if lo < 0 else 0.0, max(top, 0.0), qmax)
    if method == "mse":
        return _mse_search(hist, centers, lo, hi, qmax)
    raise ValueError(f"unknown calibration method {method!r}")


def _mse_search(hist: torch.Tensor, centers: torch.Tensor, lo: float, hi: float, qmax: int) -> tuple[float, int]:
    """The clipping range [a * lo, b * hi] minimising the histogram-weighted squared quantization error."""
    b = torch.linspace(0.05, 1.0, 96, dtype=torch.float64)
    a = torch.linspace(0.05, 1.0, 24, dtype=torch.float64) if lo < 0 else torch.ones(1, dtype=torch.float64)
    los = (a[:, None] * lo).expand(len(a), len(b)).reshape(-1)
    his = (b[None, :] * hi).expand(len(a), len(b)).reshape(-1)
    scales = ((his - los) / qmax).clamp_min(1e-12)
    zps = torch.round(-los / scales).clamp(0, qmax)
    keep = hist > 0
    c, n = centers[keep], hist[keep]
    q = torch.clamp(torch.round(c[None, :] / scales[:, None]) + zps[:, None], 0, qmax)
    err = (((q - zps[:, None]) * scales[:, None] - c[None, :]) ** 2 * n[None, :]).sum(1)
    best = int(torch.argmin(err))
    return _qparams(float(los[best]), float(his[best]), qmax)


def weight_scales(weight: torch.Tensor, bits: int, method: str) -> torch.Tensor:
    """Per-output-channel symmetric scales for ``weight`` (channels first) at ``bits``."""
    qmax = 2 ** (bits - 1) - 1
    qmin = -(2 ** (bits - 1))
    w = weight.detach().reshape(weight.shape[0], -1).double()
    amax = w.abs().amax(1)
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    if method == "minmax":
        return (amax / qmax).float()
    if method != "mse":
        raise ValueError(f"unknown weight method {method!r}")
    ratios = torch.linspace(0.3, 1.0, 71, dtype=torch.float64)
    s = (amax[None, :] * ratios[:, None] / qmax)[:, :, None]  # ratios x channels x 1
    err = ((torch.clamp(torch.round(w[None] / s), qmin, qmax) * s - w[None]) ** 2).sum(2)
    return s[:, :, 0].gather(0, err.argmin(0)[None, :])[0].float()
