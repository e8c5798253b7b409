"""The default example model: architecture contract, committed weights, accuracy, calibration set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repfx_deploy.examples.fashion_mnist import (
    CLASSES,
    MEAN,
    REPO_ROOT,
    STD,
    WEIGHTS_PATH,
    FashionCNN,
    load_pretrained,
)

EVAL_PATH = REPO_ROOT / "examples" / "fashion-mnist" / "eval-1000.npz"
CALIB_PATH = REPO_ROOT / "calibration" / "fashion-mnist" / "calib-512.npz"


def _normalize(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), as documented in calibration/fashion-mnist/README.md."""
    return ((torch.from_numpy(x).float() / 255.0 - MEAN) / STD).unsqueeze(1)


@pytest.fixture(scope="module")
def pretrained() -> FashionCNN:
    return load_pretrained()


def test_forward_maps_batch_to_ten_logits_when_built_without_arguments() -> None:
    model = FashionCNN().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, len(CLASSES)) == (2, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_parameter_count_is_under_100k() -> None:
    assert sum(p.numel() for p in FashionCNN().parameters()) < 100_000


def test_committed_weights_load_strictly_with_weights_only() -> None:
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    result = FashionCNN().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_load_pretrained_returns_model_in_eval_mode(pretrained: FashionCNN) -> None:
    assert isinstance(pretrained, FashionCNN)
    assert not any(m.training for m in pretrained.modules())


def test_pretrained_accuracy_is_at_least_88_percent_when_scored_on_eval_1000(pretrained: FashionCNN) -> None:
    with np.load(EVAL_PATH) as data:
        x, y = data["x"], data["y"]
    assert x.shape == (1000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [100] * 10
    with torch.no_grad():
        pred = pretrained(_normalize(x)).argmax(1).numpy()
    assert (pred == y).mean() >= 0.88


def test_calibration_file_has_documented_shapes_dtypes_and_all_classes() -> None:
    with np.load(CALIB_PATH) as data:
        assert set(data.files) == {"x", "y"}
        x, y = data["x"], data["y"]
    assert x.shape == (512, 28, 28) and x.dtype == np.uint8
    assert y.shape == (512,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.min() >= 51 and counts.max() <= 52
    # Raw pixels, not normalized floats squeezed into uint8: real images span most of 0..255.
    assert x.max() > 200
