"""The recipe's prune pass: option validation, recovery wiring, and one run through compress."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from prune_zoo import OptionANet

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.prune.handler import parse_options, prune_handler
from repfx_deploy.passes.registry import PassContext, apply_passes, get_handler
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 16, 16)),)


def _images(n: int, labeled: bool) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(x=rng.standard_normal((n, 3, 16, 16)).astype(np.float32), y=rng.integers(0, 10, n) if labeled else None, source="random")


def test_prune_kind_is_registered():
    assert get_handler("prune") is prune_handler


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ratioo": 0.5}, "ratioo"),
        ({"importance": "l3"}, "importance"),
        ({"macs_ratio": 1.5}, "macs_ratio"),
        ({"layer_ratios": [0.5]}, "layer_ratios"),
        ({"lr": 0.1}, "no fine-tuning budget"),
        ({"finetune_steps": 10, "augment": "mixup"}, "augment"),
    ],
)
def test_parse_options_raises_recipe_error_when_option_is_bad(options, match):
    with pytest.raises(RecipeError, match=match):
        parse_options(options, "host")


def test_parse_options_takes_round_to_from_target_profile():
    config, bn, finetune = parse_options({"macs_ratio": 0.5, "layer_ratios": {"layer1.*": 0.2}, "ignore": "fc"}, "rpi4")
    assert config.round_to == 8 and config.layer_ratios == (("layer1.*", 0.2),) and config.ignore == ("fc",)
    assert bn["enabled"] and finetune is None
    assert parse_options({}, "host")[0].round_to == 16


def test_handler_recalibrates_and_finetunes_on_calibration_with_warning(caplog):
    model = OptionANet().eval()
    context = PassContext(input_specs=SPECS, calibration=_images(64, labeled=False))
    with caplog.at_level(logging.WARNING, logger="repfx_deploy.passes.prune"):
        pruned, records = apply_passes(model, (("prune", {"ratio": 0.5, "round_to": 4, "finetune_steps": 3, "batch_size": 16}),), context)
    stats = records[0]["stats"]
    assert stats["bn_recalibrated"] == 7 and stats["finetune"]["steps"] == 3 and stats["finetune_data"] == "calibration"
    assert "overfits" in caplog.text
    assert stats["macs_after"] < 0.5 * stats["macs_before"] and stats["params_after"] < stats["params_before"]
    assert {"layer": "conv1", "before": [16, 3, 3, 3], "after": [8, 3, 3, 3]} in stats["layers"]
    json.dumps(stats)  # report-ready
    assert not pruned.training and pruned(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def test_handler_raises_recipe_error_when_finetuning_has_no_data():
    context = PassContext(input_specs=SPECS)
    with pytest.raises(RecipeError, match="train"):
        prune_handler(OptionANet().eval(), {"ratio": 0.5, "round_to": 4, "finetune_steps": 3}, context)


@pytest.mark.tvm
def test_compress_runs_prune_recipe_on_fashion_mnist_example(tmp_path):
    from repfx_deploy.ingest.loader import LoadOptions
    from repfx_deploy.measure.timing import TimingConfig
    from repfx_deploy.pipeline.compress import CompressRequest, compress
    from repfx_deploy.recipe import load_recipe

    root = __import__("pathlib").Path(__file__).resolve().parents[3]
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
kind = "prune"
macs_ratio = 0.5
round_to = 8
finetune_steps = 20
batch_size = 32
''')
    report = compress(CompressRequest(
        model_path=root / "examples/fashion-mnist/model.pt", out_dir=tmp_path / "out", recipe=load_recipe(recipe),
        load=LoadOptions(), timing=TimingConfig(warmup=2, repeats=5, min_time_s=0.0, remeasure=0),
    ))
    stats = report["passes"][0]["stats"]
    assert report["compressed"]["macs"] <= 0.55 * report["baseline"]["macs"]
    assert stats["bn_recalibrated"] > 0 and stats["finetune"]["steps"] == 20
    assert report["compressed"]["accuracy"] > 0.5  # a 10-class problem: far above chance after 20 steps
    assert (tmp_path / "out" / "tvm" / "model.so").exists()
