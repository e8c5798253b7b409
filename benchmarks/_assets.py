"""The shared real models the benchmarks measure (../shared/assets, never copied into the project)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# REPFX_ASSETS points elsewhere, e.g. at a partial copy on a GPU machine that has no ../shared beside the checkout
ASSETS = Path(os.environ.get("REPFX_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))

# name -> (builder taking the zoo module, batch-1 input shape)
MODELS = {
    "resnet20": (lambda z: z.cifar10_resnet(20), (1, 3, 32, 32)),
    "resnet56": (lambda z: z.cifar10_resnet(56), (1, 3, 32, 32)),
    "lenet5": (lambda z: z.mnist_lenet5(), (1, 1, 32, 32)),
    "vit": (lambda z: z.cifar10_vit(), (1, 3, 32, 32)),
}


def load_zoo():
    """The assets' loader module; exits with a message when the folder is absent."""
    if not (ASSETS / "zoo.py").exists():
        sys.exit(f"needs the shared assets at {ASSETS}")
    spec = importlib.util.spec_from_file_location("zoo", ASSETS / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    return zoo


def accuracy_percent(model, data, batch: int = 500) -> float | None:
    """Top-1 % of ``model`` on a labeled ``Dataset`` (None without data: a GPU copy without the test set scores later)."""
    import torch

    if data is None:
        return None
    model.eval()
    x, correct = torch.from_numpy(data.x), 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1).numpy() == data.y[i : i + batch]).sum())
    return 100.0 * correct / len(x)


def macs_params(model, shape: tuple[int, ...] = (1, 3, 32, 32)) -> tuple[int, int]:
    """MACs and parameters of ``model`` on one input of ``shape`` (analyze/torch_stats)."""
    from repfx_deploy.analyze.torch_stats import torch_stats
    from repfx_deploy.spec import InputSpec

    s = torch_stats(model, (InputSpec("input", shape),))
    return s.macs, s.params
