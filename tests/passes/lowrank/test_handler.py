"""The recipe's lowrank pass: keys checked at recipe load, BatchNorm re-calibration, recovery as its own pass,
the trained-rank mode, and the pass inside compress."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from lowrank_zoo import ConvBNNet
from protocol_checks import make_context

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.lowrank import LowRankConfig
from repfx_deploy.passes.lowrank.factorize import Factorized
from repfx_deploy.passes.lowrank.handler import LowRankPass
from repfx_deploy.passes.registry import apply, parse_pass, pass_for_kind, run_passes
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


def _parse(**keys) -> LowRankConfig:
    return parse_pass({"kind": "lowrank", **keys}, 0)


def test_lowrank_kind_is_registered_to_its_pass():
    assert isinstance(pass_for_kind("lowrank"), LowRankPass)
    assert LowRankPass.config_type is LowRankConfig


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"params_ratioo": 0.5}, "params_ratioo"),
        ({"params_ratio": 1.5}, "params_ratio"),
        ({"params_ratio": 0.5, "energy": 0.9}, "one of"),
        ({"energy": 0.9, "criterion": "sensitivity"}, "budget"),
        ({"conv_scheme": "tucker"}, r"passes\[0\]\.conv_scheme"),
        ({"layer_ranks": [4]}, r"passes\[0\]\.layer_ranks"),
        ({"layer_ranks": {"fc": 0}}, "layer_ranks"),
        ({"ranks": {"fc": "spatial"}}, "ranks"),
        ({"ranks": {"fc": True}}, r"passes\[0\]\.ranks"),
        ({"trained_rank": True, "trp_epochs": 0}, "trp_epochs"),
        ({"nuclear_weight": 1e-3}, "trained_rank"),
        ({"trp_steps": 5}, "trained_rank"),
        ({"round_to": 0}, "round_to"),
        ({"bn_batches": 0}, "bn_batches"),
    ],
)
def test_bad_key_raises_recipe_error_naming_it(keys, match):
    with pytest.raises(RecipeError, match=match):
        _parse(**keys)


@pytest.mark.parametrize("key", ["finetune_steps", "finetune_epochs", "lr", "batch_size", "augment"])
def test_finetune_key_raises_recipe_error_showing_the_recover_pass(key):
    with pytest.raises(RecipeError) as info:
        _parse(params_ratio=0.5, **{key: 1})
    assert key in info.value.problem and 'kind = "recover"' in info.value.fix


def test_bn_batches_is_a_lowrank_key_not_a_moved_one():
    assert _parse(bn_batches=4).bn_batches == 4


def test_config_defaults_to_half_the_parameters_and_the_target_multiple():
    config = _parse()
    assert config.budget == ("params", 0.5) and config.round_to is None
    context = make_context(SPECS, profile=get_profile("rpi4"))
    result = apply(ConvBNNet().eval(), config, context)
    assert result.extras["round_to"] == 8
    assert all(r["rank"] % 8 == 0 for r in result.extras["layers"] if r["rank"])
    assert _parse(round_to=2).round_to == 2


def test_pass_recalibrates_batchnorm_then_recover_finetunes_on_calibration_with_warning(caplog):
    torch.manual_seed(0)
    model = ConvBNNet().eval()
    context = make_context(SPECS, calibration=_images(64, labeled=False))
    configs = (
        _parse(params_ratio=0.6, round_to=2),
        parse_pass({"kind": "recover", "finetune_steps": 2, "batch_size": 16}, 1),
    )
    with caplog.at_level(logging.WARNING, logger="repfx_deploy.passes"):
        run = run_passes(model, configs, context)
    lowrank, recover = run.results
    assert lowrank.params_kept <= 0.6 and lowrank.macs_after < lowrank.macs_before
    assert lowrank.extras["bn_recalibrated"] == 2 and "finetune" not in lowrank.extras
    assert recover.extras["finetune"]["steps"] == 2 and recover.extras["finetune"]["data"] == "calibration"
    assert any(isinstance(m, Factorized) for m in run.module.modules())
    assert "calibration set" in caplog.text


def test_pass_without_calibration_warns_and_skips_batchnorm(caplog):
    with caplog.at_level(logging.WARNING, logger="repfx_deploy.passes.lowrank"):
        result = apply(ConvBNNet().eval(), _parse(params_ratio=0.6, round_to=2), make_context(SPECS))
    assert result.extras["bn_recalibrated"] == 0 and "not re-calibrated" in caplog.text


def test_trained_rank_lowers_nuclear_norm_in_prepare_then_factorizes():
    torch.manual_seed(0)
    model = ConvBNNet().eval()
    context = make_context(SPECS, train=_images(64, labeled=True))
    config = _parse(
        energy=0.9, round_to=1, trained_rank=True, nuclear_weight=0.01, trp_steps=4, trp_batch_size=16, trp_lr=0.01
    )
    the_pass = pass_for_kind("lowrank")
    prepared = the_pass.prepare(model, config, context)
    trp = prepared.trained_rank
    assert (
        trp["nuclear_norm_after"] < trp["nuclear_norm_before"]
        and trp["finetune"]["steps"] == 4
        and trp["data"] == "train"
    )
    result = the_pass.apply_assignment(prepared, {})
    assert result.extras["trained_rank"] == trp and result.extras["factorized"] >= 1


def test_trained_rank_without_data_raises_recipe_error():
    config = _parse(trained_rank=True, trp_steps=2)
    with pytest.raises(RecipeError, match="training"):
        pass_for_kind("lowrank").prepare(ConvBNNet().eval(), config, make_context(SPECS))


def test_compress_runs_lowrank_then_recover_recipe_on_fashion_mnist_example(tmp_path):
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
kind = "lowrank"
params_ratio = 0.5
round_to = 8
[[passes]]
kind = "recover"
finetune_steps = 10
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
    lowrank, recover = report["passes"]
    assert report["compressed"]["params"] <= 0.5 * report["baseline"]["params"]
    assert lowrank["extras"]["factorized"] >= 1 and recover["extras"]["finetune"]["steps"] == 10
    assert lowrank["decisions"] and all(isinstance(v, (int, str)) for v in lowrank["decisions"].values())
    assert report["compressed"]["accuracy"] > 0.5  # 10 classes: far above chance
    assert report["verification"]  # torch, ONNX Runtime and TVM compared on the factorized model
    assert (tmp_path / "out" / "tvm" / "model.so").exists()
