"""Real model, real data: the published ResNet-20 through ingest -> ONNX -> TVM, outputs within 1e-4 of torch."""

import io
import zipfile

import numpy as np
import pytest

from repfx_deploy.ingest.loader import LoadOptions, load_model
from repfx_deploy.lower.onnx_export import export_onnx
from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner
from repfx_deploy.spec import InputSpec

pytestmark = [pytest.mark.assets, pytest.mark.tvm]


@pytest.fixture(scope="module")
def resnet20(zoo, fixtures_dir):
    path = zoo.HERE / "models" / "cifar10-resnet20.th"
    return load_model(path, LoadOptions(arch="zoo_arch:resnet20", python_path=(fixtures_dir,), input_specs=(InputSpec("input", (1, 3, 32, 32)),)))


@pytest.fixture(scope="module")
def cifar_images(zoo):
    from PIL import Image

    with zipfile.ZipFile(zoo.HERE / "cifar10" / "test-jpeg.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))[::1250][:8]  # archive is ordered by class
        pixels = np.stack([np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB")) for n in names])
    x = zoo.normalize_cifar_resnet(pixels).numpy()
    return [x[i : i + 1] for i in range(len(x))]


@pytest.fixture(scope="module")
def onnx_path(resnet20, tmp_path_factory):
    return export_onnx(resnet20.module, resnet20.input_specs, tmp_path_factory.mktemp("r20") / "r20.onnx").path


def test_resnet20_state_dict_loads_with_module_prefix_and_wrapper(resnet20, zoo, cifar_images):
    reference = zoo.cifar10_resnet(20)
    import torch

    x = torch.from_numpy(cifar_images[0])
    assert torch.allclose(resnet20.module(x), reference(x))


def test_resnet20_onnx_matches_torch_within_1e4(resnet20, onnx_path, cifar_images):
    torch_r, ort_r = TorchRunner(resnet20.module), OrtRunner(onnx_path)
    for x in cifar_images:
        np.testing.assert_allclose(ort_r.run([x])[0], torch_r.run([x])[0], atol=1e-4, rtol=0)


def test_resnet20_tvm_matches_torch_within_1e4(resnet20, onnx_path, cifar_images, tmp_path):
    from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.targets import get_profile, resolve_tvm_target

    compile_onnx(onnx_path, tmp_path, CompileConfig(target=resolve_tvm_target(get_profile("host"))))
    tvm_r, torch_r = load_tvm_runner(tmp_path), TorchRunner(resnet20.module)
    for x in cifar_images:
        np.testing.assert_allclose(tvm_r.run([x])[0], torch_r.run([x])[0], atol=1e-4, rtol=0)
