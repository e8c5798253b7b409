"""Small helpers for ``nn.Module``s of every origin (eager, TorchScript, ``torch.export``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn


def inference_mode(module: nn.Module) -> nn.Module:
    """``module`` in eval mode. A module from ``ExportedProgram.module()`` refuses ``eval()`` (its graph was
    captured in the mode it was exported in), so it is returned as it is."""
    try:
        return module.eval()
    except NotImplementedError:
        return module
