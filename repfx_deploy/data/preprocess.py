"""Preprocessing for calibration and evaluation data: the same recipe a model was trained with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from repfx_deploy.errors import DataError

Layout = Literal["NCHW", "NHWC"]
# a side past this is no model input; resizing to it would allocate gigabytes per image
MAX_SIZE = 8192


@dataclass(frozen=True)
class Preprocess:
    """uint8 pixels -> ``scale`` -> resize to ``size`` -> ``(x - mean) / std`` per channel -> ``layout``.

    ``size`` 0 keeps the stored size. ``mean``/``std`` have one value (broadcast) or one per channel. Float
    arrays are taken as already preprocessed and only checked.
    """

    size: int = 0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Layout = "NCHW"
    scale: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        if not 0 <= self.size <= MAX_SIZE:
            raise DataError(
                f"preprocess.size must be 0 .. {MAX_SIZE}, got {self.size}.",
                "Use the model's input side (e.g. 224), or 0 to keep the stored size.",
            )
        if not all(math.isfinite(v) for v in (*self.mean, *self.std, self.scale)):
            raise DataError(
                "preprocess.mean, std and scale must be finite numbers.", "Use the training values (e.g. 0.485, 0.229)."
            )
        if not self.mean or not self.std or len(self.mean) != len(self.std):
            raise DataError(
                "preprocess.mean and preprocess.std must be non-empty and equally long.", "Give one value per channel."
            )
        if any(s <= 0 for s in self.std):
            raise DataError(f"preprocess.std must be positive, got {self.std}.", "Use the training std (e.g. 0.229).")
        if self.layout not in ("NCHW", "NHWC"):
            raise DataError(
                f"preprocess.layout must be NCHW or NHWC, got {self.layout!r}.", "Use NCHW for PyTorch models."
            )

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "scale": self.scale,
        }

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels``: uint8 N x H x W (gray) or N x H x W x C. Returns float32 in ``layout``."""
        import torch
        import torch.nn.functional as F

        if pixels.ndim == 3:
            pixels = pixels[..., None]
        if pixels.ndim != 4:
            raise DataError(
                f"Image arrays must be N x H x W or N x H x W x C; got shape {pixels.shape}.",
                "Store images in one of those layouts.",
            )
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() * self.scale
        if self.size and tuple(x.shape[2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        channels = x.shape[1]
        if len(self.mean) not in (1, channels):
            raise DataError(
                f"preprocess.mean has {len(self.mean)} values but the images have {channels} channel(s).",
                "Give one value, or one per channel.",
            )
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - mean) / std
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return x.contiguous().numpy()
