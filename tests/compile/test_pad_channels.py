"""Output channels padded to whole vectors (compile/pad_channels.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from compile_kernels import export_onnx, host_is_avx512, lowered_kernels

from repfx_deploy.compile import (
    CompileConfig,
    compile_onnx,
    host_target,
    load_tvm_runner,
)
from repfx_deploy.compile.pad_channels import padded_width
from repfx_deploy.measure.runtimes import OrtRunner

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize(
    ("channels", "lanes", "expected"),
    [(24, 16, 32), (40, 16, 48), (56, 16, 64), (8, 16, 8), (16, 16, 16), (20, 16, 20), (24, 4, 24), (24, 8, 24), (200, 16, 200)],
)
def test_padded_width_rounds_up_only_when_it_pays(channels, lanes, expected):
    # 8 -> 16 doubles the work for no fewer vector instructions; 20 -> 32 is +60 %; 200 -> 208 would need a
    # tile wider than the register budget
    assert padded_width(channels, lanes) == expected


class OddWidthNet(nn.Module):
    """Pruned-style widths: 24 and 56 output channels (not whole 16-lane vectors), a residual add on 24."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 24, 3, padding=1)
        self.b = nn.Conv2d(24, 24, 3, padding=1)
        self.c = nn.Conv2d(24, 56, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.relu(self.b(y) + y)
        return torch.relu(self.c(y))


@pytest.fixture(scope="module")
def odd_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(OddWidthNet(), (1, 3, 16, 16), tmp_path_factory.mktemp("odd") / "odd.onnx")


@pytest.mark.parametrize("pad", [True, False])
def test_odd_width_convs_match_onnxruntime_and_all_get_the_default_schedule(odd_onnx, tmp_path, pad):
    config = CompileConfig(target=host_target(threads=1), tuning_db=tmp_path / "db", pad_channels=pad)
    art = compile_onnx(odd_onnx, tmp_path, config)
    assert art.manifest["kernels_untuned"] == 0  # the padded kernels too: none fell back to plain loops
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = load_tvm_runner(tmp_path, threads=1).run([x])[0]
    assert got.shape == (1, 56, 8, 8)
    np.testing.assert_allclose(got, OrtRunner(odd_onnx, 1).run([x])[0], atol=1e-4, rtol=1e-4)


def test_odd_width_convs_are_computed_padded_on_avx512(odd_onnx):
    if not host_is_avx512():
        pytest.skip("padding applies to 16-lane vectors only")
    kernels, layout = lowered_kernels(odd_onnx, (1, 3, 16, 16))
    assert layout == "NHWC"
    assert sum("strided_slice" in n and "conv2d" in n for n in kernels) == 3  # 24, 24 and 56 channels, each sliced back
