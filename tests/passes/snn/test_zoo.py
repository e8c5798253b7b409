"""The shared LeNet-5 converts to a spiking network that keeps its MNIST accuracy at T = 16 (250 test images)."""

import pytest
import torch

from repfx_deploy.passes.snn.config import SnnConfig
from repfx_deploy.passes.snn.convert import convert


@pytest.mark.assets
def test_lenet5_conversion_at_16_steps_within_one_point_of_ann(zoo):
    ann = zoo.mnist_lenet5()
    xtr, _ = zoo.mnist("train")
    xte, yte = zoo.mnist("test")
    calib = zoo.normalize_mnist(xtr[:512], 32)
    x, y = zoo.normalize_mnist(xte[::40], 32), torch.as_tensor(yte[::40])
    snn, report = convert(ann, calib.split(128), SnnConfig(timesteps=16))
    assert len(report.neurons) == 4 and report.maxpools_moved == 1
    with torch.no_grad():
        ann_acc = (ann(x).argmax(1) == y).float().mean().item()
        snn_acc = (snn(x).argmax(1) == y).float().mean().item()
    assert snn_acc >= ann_acc - 0.01
