"""Shared fixtures: tiny models saved in each supported format, and the shared real assets."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ASSETS = ROOT.parent / "shared" / "assets"

sys.path.insert(0, str(FIXTURES))
import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def zoo():
    """The shared assets' loader module, or skip the test when the folder is absent."""
    if not (ASSETS / "zoo.py").exists():
        pytest.skip("../shared/assets is not present")
    spec = importlib.util.spec_from_file_location("repfx_test_zoo", ASSETS / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    return zoo


@pytest.fixture
def tiny_conv() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_models.TinyConvNet().eval()


@pytest.fixture
def tiny_state_dict(tmp_path, tiny_conv) -> Path:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_conv.state_dict(), path)
    return path


@pytest.fixture
def tiny_onnx(tmp_path, tiny_conv) -> Path:
    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.spec import InputSpec

    return export_onnx(tiny_conv, (InputSpec("input", (1, 3, 8, 8)),), tmp_path / "tiny.onnx").path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """CLI commands point the package logger at the terminal and stop propagation; undo that after each
    test so later tests (caplog) still see the package's log records."""
    logger = logging.getLogger("repfx_deploy")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
