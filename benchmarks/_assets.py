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
