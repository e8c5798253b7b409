"""The default CPU schedule's choices (compile/tvm_schedule.py) and what they compile to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from compile_kernels import export_onnx

from repfx_deploy.compile import (
    CompileConfig,
    compile_onnx,
    host_target,
    load_tvm_runner,
)
from repfx_deploy.compile.tvm_schedule import _pick_vec
from repfx_deploy.measure.runtimes import OrtRunner


@pytest.mark.parametrize(("extent", "vec"), [(64, 32), (48, 16), (24, 8), (10, 10), (32, 32), (45, 15), (51, 17), (58, 29), (65, 13)])
def test_pick_vec_splits_rows_wider_than_two_vectors_into_divisors(extent, vec):
    assert _pick_vec(extent, 16) == vec


class AttentionScores(nn.Module):
    """softmax(q k^T / 4) for 4 heads of 16: the kernel a token-pruned ViT runs at odd token counts."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(64, 128)

    def forward(self, x):
        q, k = self.qk(x).view(1, -1, 2, 4, 16).permute(2, 0, 3, 1, 4)
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25, -1)


@pytest.mark.tvm
@pytest.mark.parametrize("tokens", [45, 51])
def test_attention_scores_at_odd_token_counts_match_onnxruntime(tokens, tmp_path):
    torch.manual_seed(0)
    onnx_path = export_onnx(AttentionScores(), (1, tokens, 64), tmp_path / "scores.onnx")
    out = tmp_path / "tvm"
    out.mkdir()
    compile_onnx(onnx_path, out, CompileConfig(target=host_target(threads=1)))
    x = np.random.default_rng(0).standard_normal((1, tokens, 64)).astype(np.float32)
    got = load_tvm_runner(out, threads=1).run([x])[0]
    want = OrtRunner(onnx_path, threads=1).run([x])[0]
    assert got.shape == (1, 4, tokens, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5)
