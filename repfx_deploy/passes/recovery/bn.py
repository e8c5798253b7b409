"""Re-estimate BatchNorm running statistics on unlabeled data.

After channels are removed or weights quantized, the activations a BatchNorm sees no longer match the running
mean/variance it stored, which alone can cost many points of accuracy; forwarding a few batches in train mode
with a cumulative average (``momentum=None``) fixes that without gradients or labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from repfx_deploy.errors import DataError

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset


def recalibrate_bn(module: nn.Module, data: Dataset, *, batches: int = 32, batch_size: int = 64, seed: int = 0) -> int:
    """Reset every BatchNorm's running stats in ``module`` and re-estimate them on ``data``; returns how many
    BatchNorm layers were re-calibrated (0: nothing to do, nothing run).

    Up to ``batches`` batches of ``batch_size`` samples are drawn from a seeded shuffle of ``data`` (data sets
    are often stored ordered by class, and the first batches of one class would skew the statistics). Only the
    BatchNorms are put in train mode, so dropout stays off; weights are not touched, and every module's mode
    and each BatchNorm's momentum are restored afterwards.
    """
    import torch
    import torch.nn as nn

    if batches < 1 or batch_size < 1:
        raise ValueError("recalibrate_bn needs batches >= 1 and batch_size >= 1")
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    if data is None or len(data) == 0:
        raise DataError(
            "BatchNorm re-calibration needs unlabeled samples, but the data set is empty or missing.",
            "Give calibration data (the recipe's [data] calibration, or --calibration).",
        )
    modes = {m: m.training for m in module.modules()}
    momenta = {m: m.momentum for m in norms}
    x = torch.from_numpy(data.x)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    size = min(batch_size, len(x))
    # full batches only, so every batch weighs the same in the cumulative average
    count = min(batches, len(x) // size)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        module.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
            m.train()
        with torch.no_grad():
            for b in range(count):
                module(x[order[b * size : (b + 1) * size]].to(device))
    finally:
        for layer, mode in modes.items():
            layer.train(mode)
        for norm, momentum in momenta.items():
            norm.momentum = momentum
    return len(norms)
