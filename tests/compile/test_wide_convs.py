"""Wide stride-1 convolutions kept NCHW among NHWC ones (compile/wide_convs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from compile_kernels import export_onnx, host_is_avx512, lowered_kernels

from repfx_deploy.compile import (
    CompileConfig,
    compile_onnx,
    host_target,
    load_tvm_runner,
)
from repfx_deploy.measure.runtimes import OrtRunner

pytestmark = pytest.mark.tvm


class NarrowWideNet(nn.Module):
    """8-channel layers on 32-wide rows (kept NCHW), a residual add among them, then a stride-2 layer and a
    16-wide stage (NHWC): the layout changes once, between the two."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 32, 3, stride=2, padding=1)
        self.deep = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        y = F.relu(self.stem(x))
        y = F.relu(self.body(y) + y)
        y = F.relu(self.down(y))
        y = F.relu(self.deep(y) + y)
        return self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def narrow_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(NarrowWideNet(), (1, 3, 32, 32), tmp_path_factory.mktemp("narrow") / "narrow.onnx")


def _kernel_layouts(onnx_path: Path, **lower_options) -> list[str]:
    kernels, _ = lowered_kernels(onnx_path, (1, 3, 32, 32), **lower_options)
    script = "\n".join(f.script() for f in kernels.values())
    return [b for b in ("conv2d_nchw", "conv2d_nhwc") if f'sblock("{b}")' in script]


@pytest.mark.parametrize("wide_nchw", [True, False])
def test_mixed_layout_build_matches_onnxruntime(narrow_onnx, tmp_path, wide_nchw):
    config = CompileConfig(target=host_target(threads=1), tuning_db=tmp_path / "db", wide_convs_nchw=wide_nchw)
    art = compile_onnx(narrow_onnx, tmp_path, config)
    assert art.manifest["kernels_untuned"] == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = OrtRunner(narrow_onnx, 1).run([x])[0]
    np.testing.assert_allclose(load_tvm_runner(tmp_path, threads=1).run([x])[0], want, atol=1e-4, rtol=1e-4)


def test_wide_rows_stay_nchw_and_the_rest_go_nhwc_on_avx512(narrow_onnx):
    if not host_is_avx512():
        pytest.skip("kept NCHW on 16-lane vectors only")
    assert _kernel_layouts(narrow_onnx) == ["conv2d_nchw", "conv2d_nhwc"]
    assert _kernel_layouts(narrow_onnx, wide_convs_nchw=False) == ["conv2d_nhwc"]
