"""Real model, real data: the published ResNet-20, PTQ on 64 CIFAR-10 training images, int8 on ONNX Runtime."""

import numpy as np
import pytest
import torch

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.lower.onnx_export import export_onnx
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.quantize.inspect_ort import ort_kernels
from repfx_deploy.spec import InputSpec

pytestmark = pytest.mark.assets


def _images(zoo, split: str, count: int, seed: int) -> np.ndarray:
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(zoo.HERE / "cifar10" / f"{split}-jpeg.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        picked = np.random.default_rng(seed).choice(len(names), count, replace=False)  # the archive is ordered by class
        pixels = np.stack([np.asarray(Image.open(io.BytesIO(z.read(names[i]))).convert("RGB")) for i in picked])
    return zoo.normalize_cifar_resnet(pixels).numpy()


def test_resnet20_ptq_on_64_images_keeps_top1_agreement_on_ort_int8(run_quantize, zoo, tmp_path):
    model = zoo.cifar10_resnet(20)
    specs = (InputSpec("input", (1, 3, 32, 32)),)
    calib = Dataset(x=_images(zoo, "train", 64, 0), y=None, source="cifar10 train")
    q = run_quantize(model, specs, calib, QuantizeConfig()).module
    path = export_onnx(q, specs, tmp_path / "r20_int8.onnx").path
    kernels = ort_kernels(path)
    assert kernels.int8_ops["QLinearConv"] == 19 and kernels.int8_ops["QLinearAdd"] == 9
    x = _images(zoo, "test", 200, 1)
    ort = OrtRunner(path, 2)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).argmax(1).numpy()
    got = np.array([ort.run([x[i : i + 1]])[0].argmax() for i in range(len(x))])
    # 186 of 200 (0.93) on this torch 2.13 / ONNX Runtime, the same with the pass before the protocol; 0.5 point per image
    assert (got == ref).mean() >= 0.92
