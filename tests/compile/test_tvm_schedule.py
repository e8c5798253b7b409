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
from repfx_deploy.compile.tvm_schedule import _pick_rows, _pick_vec
from repfx_deploy.measure.runtimes import OrtRunner


@pytest.mark.parametrize(("extent", "vec"), [(64, 32), (48, 16), (24, 8), (10, 10), (32, 32), (45, 15), (51, 17), (58, 29), (65, 13)])
def test_pick_vec_splits_rows_wider_than_two_vectors_into_divisors(extent, vec):
    assert _pick_vec(extent, 16) == vec


@pytest.mark.parametrize(("extent", "vec_regs", "rows"), [(64, 2, 8), (58, 2, 2), (51, 2, 3), (197, 2, 8), (197, 4, 4), (31, 2, 8), (5, 2, 5), (7, 16, 1)])
def test_pick_rows_takes_a_divisor_and_a_short_last_tile_only_for_primes(extent, vec_regs, rows):
    assert _pick_rows(extent, vec_regs) == rows


class AttentionScores(nn.Module):
    """softmax(q k^T / 4) for 4 heads of 16: the kernel a token-pruned ViT runs at odd token counts."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(64, 128)

    def forward(self, x):
        q, k = self.qk(x).view(1, -1, 2, 4, 16).permute(2, 0, 3, 1, 4)
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25, -1)


def _tvm_and_ort(module: nn.Module, shape: tuple[int, ...], tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """``module``'s output on one random input, compiled by TVM (1 thread) and run by ONNX Runtime."""
    onnx_path = export_onnx(module, shape, tmp_path / "model.onnx")
    out = tmp_path / "tvm"
    out.mkdir()
    compile_onnx(onnx_path, out, CompileConfig(target=host_target(threads=1)))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return load_tvm_runner(out, threads=1).run([x])[0], OrtRunner(onnx_path, threads=1).run([x])[0]


@pytest.mark.tvm
@pytest.mark.parametrize("tokens", [31, 45, 51])
def test_attention_scores_at_odd_token_counts_match_onnxruntime(tokens, tmp_path):
    torch.manual_seed(0)
    got, want = _tvm_and_ort(AttentionScores(), (1, tokens, 64), tmp_path)
    assert got.shape == (1, 4, tokens, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5)


class MlpWithResidual(nn.Module):
    """x + fc2(gelu(fc1(x))): matmuls with a bias, activation and residual epilogue per tile."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 64)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


@pytest.mark.tvm
def test_mlp_at_a_prime_token_count_matches_onnxruntime_with_a_short_last_tile(tmp_path):
    torch.manual_seed(0)
    tokens = 37  # prime: 8-row tiles, the last one 5 rows long
    got, want = _tvm_and_ort(MlpWithResidual(), (1, tokens, 64), tmp_path)
    assert got.shape == (1, tokens, 64)
    np.testing.assert_allclose(got, want, atol=1e-4)
