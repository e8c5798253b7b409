"""The recipe's prune pass: registration, the target's rounding, a prune + recover chain, and one run through compress."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from protocol_checks import make_context
from prune_zoo import OptionANet

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import RecipeError
from repfx_deploy.passes import registry
from repfx_deploy.passes.prune import PruneConfig
from repfx_deploy.passes.prune.handler import PrunePass
from repfx_deploy.passes.registry import parse_pass, pass_for, pass_for_kind, run_passes
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import get_profile

SPECS = (InputSpec("input", (1, 3, 16, 16)),)


def _images(n: int, labeled: bool) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        x=rng.standard_normal((n, 3, 16, 16)).astype(np.float32),
        y=rng.integers(0, 10, n) if labeled else None,
        source="random",
    )


def test_prune_kind_is_registered_for_its_config_type():
    assert isinstance(pass_for_kind("prune"), PrunePass)
    assert pass_for(PruneConfig()) is pass_for_kind("prune")


def test_parse_pass_reads_tables_and_leaves_round_to_to_the_target():
    config = parse_pass({"kind": "prune", "macs_ratio": 0.5, "layer_ratios": {"layer1.*": 0.2}, "ignore": ["fc"]}, 0)
    assert config.round_to is None and config.layer_ratios == (("layer1.*", 0.2),) and config.ignore == ("fc",)
    assert config.bn_recalibrate and config.bn_batches == 32


@pytest.mark.parametrize(("target", "multiple"), [("rpi4", 8), ("host", 16)])
def test_prune_rounds_to_the_target_profiles_channel_multiple_when_round_to_is_unset(target, multiple):
    model = OptionANet().eval()
    result = registry.apply(model, PruneConfig(ratio=0.5), make_context(SPECS, profile=get_profile(target)))
    assert result.extras["round_to"] == multiple
    assert result.module.layers[1].conv1.out_channels == 16  # 32 * 0.5, a multiple of both


def test_prune_then_recover_recalibrates_and_finetunes_on_calibration_with_warning(caplog):
    model = OptionANet().eval()
    context = make_context(SPECS, calibration=_images(64, labeled=False))
    configs = (
        parse_pass({"kind": "prune", "ratio": 0.5, "round_to": 4}, 0),
        parse_pass({"kind": "recover", "finetune_steps": 3, "batch_size": 16}, 1),
    )
    with caplog.at_level(logging.WARNING, logger="repfx_deploy.passes"):
        run = run_passes(model, configs, context)
    prune, recover = run.records
    assert prune["extras"]["bn_recalibrated"] == 7 and recover["extras"]["finetune"]["steps"] == 3
    assert recover["extras"]["finetune"]["data"] == "calibration" and "overfits" in caplog.text
    assert prune["macs_after"] < 0.5 * prune["macs_before"] and prune["params_after"] < prune["params_before"]
    assert {"layer": "conv1", "before": [16, 3, 3, 3], "after": [8, 3, 3, 3]} in prune["extras"]["layers"]
    assert prune["config"] == PruneConfig(ratio=0.5, round_to=4).to_table() and prune["decisions"]["conv1"] == 8
    json.dumps(run.records)  # report-ready
    assert not run.module.training and run.module(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def test_prune_then_recover_raises_recipe_error_when_finetuning_has_no_data():
    configs = (PruneConfig(ratio=0.5, round_to=4), parse_pass({"kind": "recover", "finetune_steps": 3}, 1))
    with pytest.raises(RecipeError, match="training"):
        run_passes(OptionANet().eval(), configs, make_context(SPECS))


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
calibration = "{root / "calibration/fashion-mnist/calib-512.npz"}"
calibration_samples = 256
eval = "{root / "examples/fashion-mnist/eval-1000.npz"}"
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
[[passes]]
kind = "recover"
finetune_steps = 20
batch_size = 32
''')
    report = compress(
        CompressRequest(
            model_path=root / "examples/fashion-mnist/model.pt",
            out_dir=tmp_path / "out",
            recipe=load_recipe(recipe),
            load=LoadOptions(),
            timing=TimingConfig(warmup=2, repeats=5, min_time_s=0.0, remeasure=0),
        )
    )
    prune, recover = report["passes"]
    assert report["compressed"]["macs"] <= 0.55 * report["baseline"]["macs"]
    assert prune["extras"]["bn_recalibrated"] > 0 and recover["extras"]["finetune"]["steps"] == 20
    assert report["compressed"]["accuracy"] > 0.5  # a 10-class problem: far above chance after 20 steps
    assert (tmp_path / "out" / "tvm" / "model.so").exists()
