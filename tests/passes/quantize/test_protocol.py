"""The quantize pass keeps the pass protocol: one weight_bits site per quantizable layer, prepare (capture, fold,
calibrate, sensitivity) once, apply_assignment (quantizers at the chosen bits, ranges from the cache) many times."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from protocol_checks import check_protocol, make_context, snapshot
from prune_zoo import OptionANet
from vit_zoo import PostNormTorchViT

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import RecipeError
from repfx_deploy.passes import registry
from repfx_deploy.passes.quantize import ptq
from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.quantize.handler import QuantizePass
from repfx_deploy.passes.registry import parse_pass
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import load_profile_file

NAMES = ["stem", "conv1", "conv2", "fc"]  # the residual net's layers, in graph order
ALL_INT8 = 16 * 3 * 9 + 2 * 16 * 16 * 9 + 16 * 5 + 4 * (16 * 3 + 5)  # its all-int8 packed bytes


def _images(n: int, shape: tuple[int, ...]) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(x=rng.standard_normal((n, *shape)).astype(np.float32), y=None, source="random")


@pytest.mark.parametrize(
    "table",
    [
        {"calibration_method": "minmax"},
        {"calibration_method": "percentile", "layer_bits": {"conv1": 4, "fc": "float"}, "equalize": True},
        {"calibration_method": "minmax", "size_budget_bytes": ALL_INT8 - 1000},  # the default is the chooser's
    ],
)
def test_quantize_protocol_holds_on_the_residual_net(table, residual_net, specs, calib):
    config = parse_pass({"kind": "quantize", **table}, 0)
    inputs = (torch.from_numpy(calib.x[:4]),)
    default, moved = check_protocol(residual_net, config, make_context(specs, calibration=calib), inputs)
    assert list(default.decisions) == NAMES
    assert {layer["name"]: layer["bits"] for layer in moved.extras["layers"]} == moved.decisions


def test_quantize_protocol_holds_on_zero_pad_shortcuts_with_float_layers():
    torch.manual_seed(0)
    shape = (1, 3, 16, 16)
    data = _images(32, shape[1:])
    config = QuantizeConfig(calibration_method="minmax", calibration_batch_size=16)
    other = {"layers.0.conv1": "float", "layers.1.conv2": "float", "linear": 4}  # float next to quantized neighbours
    _, moved = check_protocol(OptionANet().eval(), config, make_context((InputSpec("input", shape),), calibration=data),
                              (torch.from_numpy(data.x[:2]),), other)
    assert moved.extras["bits_histogram"]["float"] == 2


def test_quantize_protocol_holds_on_a_vit_whose_batch_is_captured_static():
    torch.manual_seed(0)
    shape = (1, 3, 16, 16)
    data = _images(16, shape[1:])
    config = QuantizeConfig(calibration_method="minmax", calibration_batch_size=8)
    default, _ = check_protocol(PostNormTorchViT(depth=1).eval(), config, make_context((InputSpec("input", shape),), calibration=data),
                                (torch.from_numpy(data.x[:1]),))
    assert "embed.proj" in default.decisions and "head.1" in default.decisions


def test_quantize_space_lists_one_weight_bits_site_per_layer_with_bit_choices(residual_net, specs, calib):
    config = QuantizeConfig(calibration_method="minmax", layer_bits=(("conv1", 4), ("fc", "float")))
    space = QuantizePass().space(residual_net, config, make_context(specs, calibration=calib))
    assert [s.name for s in space.sites] == NAMES
    assert {s.knob for s in space.sites} == {"weight_bits"}
    assert all(s.choices == (4, 8, "float") and s.unchanged == "float" for s in space.sites)
    assert space.defaults() == {"stem": 8, "conv1": 4, "conv2": 8, "fc": "float"}
    assert space.size == 3 ** 4


def test_quantize_space_default_under_a_size_budget_is_the_mixed_precision_choice(residual_net, specs, calib):
    config = QuantizeConfig(calibration_method="minmax", size_budget_bytes=ALL_INT8 - 1000)
    prepared = QuantizePass().prepare(residual_net, config, make_context(specs, calibration=calib))
    defaults = prepared.space.defaults()
    assert 4 in defaults.values() and "float" not in defaults.values()
    assert [s.name for s in prepared.sensitivity] == NAMES
    result = QuantizePass().apply_assignment(prepared, {})
    assert result.decisions == defaults and result.extras["weights_bytes_packed_estimate"] <= ALL_INT8 - 1000


def test_apply_assignment_reuses_the_prepared_statistics_without_capturing_or_calibrating_again(
        residual_net, specs, calib, monkeypatch):
    the_pass = QuantizePass()
    prepared = the_pass.prepare(residual_net, QuantizeConfig(calibration_method="minmax"), make_context(specs, calibration=calib))
    kept = {k: v.clone() for k, v in prepared.calibration.float_means.items()}
    base = snapshot(prepared.graphs.work)

    def refuse(*args, **kwargs):
        raise AssertionError("apply_assignment must not capture or measure again")

    monkeypatch.setattr(ptq, "capture", refuse)
    monkeypatch.setattr(ptq, "measure", refuse)
    for assignment in ({"fc": "float"}, {"stem": 4, "conv2": "float"}, {}):
        result = the_pass.apply_assignment(prepared, assignment)
        assert all(result.decisions[k] == v for k, v in assignment.items())
    assert all(torch.equal(kept[k], v) for k, v in prepared.calibration.float_means.items())
    assert all(torch.equal(base[k], v) for k, v in prepared.graphs.work.state_dict().items())


def test_float_site_leaves_the_layer_without_quantizers(residual_net, specs, calib):
    the_pass = QuantizePass()
    prepared = the_pass.prepare(residual_net, QuantizeConfig(calibration_method="minmax"), make_context(specs, calibration=calib))
    everything = the_pass.apply_assignment(prepared, {})
    result = the_pass.apply_assignment(prepared, {"conv1": "float", "conv2": "float"})
    assert {L.name for L in result.module.layers if L.weight_quant is None} == {"conv1", "conv2"}
    assert len(result.module.act_quants()) < len(everything.module.act_quants())


def test_assignment_with_unsupported_bits_is_a_recipe_error_naming_the_choices(residual_net, specs, calib):
    the_pass = QuantizePass()
    prepared = the_pass.prepare(residual_net, QuantizeConfig(calibration_method="minmax"), make_context(specs, calibration=calib))
    with pytest.raises(RecipeError, match="cannot take 2") as info:
        the_pass.apply_assignment(prepared, {"conv1": 2})
    assert "'float'" in info.value.fix


def test_with_assignment_sets_layer_bits_for_every_site_and_drops_the_budget():
    config = QuantizeConfig(size_budget_bytes=1000, layer_bits=(("fc", "float"),))
    fixed = config.with_assignment({"stem": 8, "fc": 4, "conv1": "float"})
    assert fixed.layer_bits == (("conv1", "float"), ("fc", 4), ("stem", 8)) and fixed.size_budget_bytes == 0
    assert parse_pass({"kind": "quantize", **fixed.to_table()}, 0) == fixed


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"weight_bitz": 8}, "'weight_bitz' in passes[0]"),
        ({"layer_bits": 5}, "passes[0].layer_bits must be a table"),
        ({"quantize_add": "yes"}, "passes[0].quantize_add must be true or false"),
        ({"size_budget_bytes": 1.5}, "passes[0].size_budget_bytes must be an integer"),
        ({"mode": "int8"}, "passes[0].mode must be one of"),
    ],
)
def test_unknown_key_or_wrong_type_is_a_recipe_error_naming_the_key_path(table, needle):
    with pytest.raises(RecipeError) as info:
        parse_pass({"kind": "quantize", **table}, 0)
    assert needle in info.value.problem


def test_recover_keys_inside_quantize_are_refused_with_the_recover_form():
    with pytest.raises(RecipeError) as info:
        parse_pass({"kind": "quantize", "lr": 0.01, "batch_size": 32}, 0)
    assert "passes[0]" in info.value.problem and 'kind = "recover"' in info.value.fix and "lr = 0.01" in info.value.fix


def test_qat_training_keys_are_quantize_fields_not_recover_ones():
    config = parse_pass({"kind": "quantize", "mode": "qat", "finetune_steps": 5, "checkpoint": "qat.ckpt", "seed": 1}, 0)
    assert isinstance(config, QuantizeConfig) and config.finetune_steps == 5 and config.seed == 1


def test_quantize_runs_with_a_target_profile_loaded_from_a_file(tmp_path, residual_net, specs, calib):
    path = tmp_path / "board.toml"
    path.write_text('name = "board"\ndescription = "a board from a file"\nchannel_multiple = 4\n'
                    '[tvm_target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n')
    profile = load_profile_file(path)
    result = registry.apply(residual_net, QuantizeConfig(calibration_method="minmax"),
                            make_context(specs, calibration=calib, profile=profile))
    assert profile.name == "board" and result.kind == "quantize" and result.decisions == dict.fromkeys(NAMES, 8)
