"""The recipe's lowrank pass: option validation, recovery wiring, trained-rank mode."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from lowrank_zoo import ConvBNNet

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.lowrank.config import LowRankOptions
from repfx_deploy.passes.lowrank.factorize import Factorized
from repfx_deploy.passes.lowrank.handler import lowrank_handler
from repfx_deploy.passes.registry import PassContext, apply_passes, get_handler
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 16, 16)),)


def _images(n: int, labeled: bool) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(x=rng.standard_normal((n, 3, 16, 16)).astype(np.float32), y=rng.integers(0, 10, n) if labeled else None, source="random")


def test_lowrank_kind_is_registered():
    assert get_handler("lowrank") is lowrank_handler


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"params_ratioo": 0.5}, "params_ratioo"),
        ({"params_ratio": 1.5}, "params_ratio"),
        ({"params_ratio": 0.5, "energy": 0.9}, "one of"),
        ({"energy": 0.9, "criterion": "sensitivity"}, "budget"),
        ({"conv_scheme": "tucker"}, "conv_scheme"),
        ({"layer_ranks": [4]}, "layer_ranks"),
        ({"layer_ranks": {"fc": 0}}, "layer_ranks"),
        ({"lr": 0.1}, "no fine-tuning budget"),
        ({"trained_rank": True}, "no fine-tuning budget"),
        ({"nuclear_weight": 1e-3}, "trained_rank"),
        ({"round_to": 0}, "round_to"),
    ],
)
def test_options_raise_recipe_error_when_bad(options, match):
    with pytest.raises(RecipeError, match=match):
        LowRankOptions.from_options(options)


def test_options_default_to_half_the_parameters_and_target_round_to():
    opts = LowRankOptions.from_options({}, "rpi4")
    assert opts.config.budget == ("params", 0.5) and opts.config.round_to == 8 and opts.recovery.finetune is None
    assert LowRankOptions.from_options({"round_to": 2}, "rpi4").config.round_to == 2


def test_handler_factorizes_recalibrates_and_finetunes_on_calibration_with_warning(caplog):
    torch.manual_seed(0)
    model = ConvBNNet().eval()
    context = PassContext(input_specs=SPECS, calibration=_images(64, labeled=False))
    with caplog.at_level(logging.WARNING, logger="repfx_deploy.passes.lowrank"):
        factored, records = apply_passes(model, (("lowrank", {"params_ratio": 0.6, "round_to": 2, "finetune_steps": 2, "batch_size": 16}),), context)
    stats = records[0]["stats"]
    assert stats["params_kept"] <= 0.6 and stats["macs_after"] < stats["macs_before"]
    assert stats["bn_recalibrated"] == 2 and stats["finetune"]["steps"] == 2 and stats["finetune"]["data"] == "calibration"
    assert any(isinstance(m, Factorized) for m in factored.modules())
    assert "calibration set" in caplog.text


def test_trained_rank_lowers_nuclear_norm_then_factorizes():
    torch.manual_seed(0)
    model = ConvBNNet().eval()
    context = PassContext(input_specs=SPECS, train=_images(64, labeled=True))
    options = {"energy": 0.9, "round_to": 1, "trained_rank": True, "nuclear_weight": 0.01, "finetune_steps": 4, "batch_size": 16, "lr": 0.01}
    stats = lowrank_handler(model, options, context).stats
    trp = stats["trained_rank"]
    assert trp["nuclear_norm_after"] < trp["nuclear_norm_before"] and trp["finetune"]["steps"] == 4
    assert stats["finetune"]["data"] == "train" and stats["factorized"] >= 1


def test_compress_runs_lowrank_recipe_on_fashion_mnist_example(tmp_path):
    from pathlib import Path

    from repfx_deploy.ingest.loader import LoadOptions
    from repfx_deploy.measure.timing import TimingConfig
    from repfx_deploy.pipeline.compress import CompressRequest, compress
    from repfx_deploy.recipe import load_recipe

    root = Path(__file__).resolve().parents[3]
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'''
target = "host"
arch = "repfx_deploy.examples.fashion_mnist:FashionCNN"
input_shape = "1,1,28,28"
[data]
calibration = "{root / 'calibration/fashion-mnist/calib-512.npz'}"
calibration_samples = 256
eval = "{root / 'examples/fashion-mnist/eval-1000.npz'}"
eval_samples = 200
[data.preprocess]
size = 28
mean = 0.2860
std = 0.3530
layout = "NCHW"
[[passes]]
kind = "lowrank"
params_ratio = 0.5
round_to = 8
finetune_steps = 10
batch_size = 32
''')
    report = compress(CompressRequest(
        model_path=root / "examples/fashion-mnist/model.pt", out_dir=tmp_path / "out", recipe=load_recipe(recipe),
        load=LoadOptions(), timing=TimingConfig(warmup=2, repeats=5, min_time_s=0.0, remeasure=0),
    ))
    stats = report["passes"][0]["stats"]
    assert report["compressed"]["params"] <= 0.5 * report["baseline"]["params"]
    assert stats["factorized"] >= 1 and stats["finetune"]["steps"] == 10
    assert report["compressed"]["accuracy"] > 0.5  # 10 classes: far above chance
    assert report["verification"]  # torch, ONNX Runtime and TVM compared on the factorized model
    assert (tmp_path / "out" / "tvm" / "model.so").exists()
