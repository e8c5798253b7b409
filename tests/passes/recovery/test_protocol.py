"""The recover pass keeps the pass protocol (no sites; BatchNorm re-calibration and distillation on a copy)."""

import numpy as np
import pytest
import torch
from protocol_checks import check_protocol, make_context, snapshot
from snn_nets import ConvBnPoolNet, make

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.registry import apply, parse_pass
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 1, 8, 8)),)


def _data(n: int = 32) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(x=rng.standard_normal((n, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 4, n), source="random")


def test_recover_protocol_holds_with_an_empty_space():
    data = _data()
    config = parse_pass({"kind": "recover", "finetune_steps": 2, "batch_size": 8}, 0)
    context = make_context(SPECS, calibration=data, train=data, reference=make(ConvBnPoolNet))
    default, _ = check_protocol(make(ConvBnPoolNet), config, context, (torch.from_numpy(data.x[:4]),), {})
    assert default.decisions == {} and default.extras["finetune"]["steps"] == 2 and default.extras["bn_recalibrated"] == 2


def test_recover_trains_a_copy_towards_the_reference():
    data = _data()
    student = make(ConvBnPoolNet)
    before = snapshot(student)
    result = apply(student, parse_pass({"kind": "recover", "finetune_steps": 3, "batch_size": 8}, 0),
                   make_context(SPECS, calibration=data, train=data, reference=make(ConvBnPoolNet)))
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, result.module.state_dict()[k]) for k, v in before.items())


def test_recover_without_training_data_raises_recipe_error():
    with pytest.raises(RecipeError, match="needs training data"):
        apply(make(ConvBnPoolNet), parse_pass({"kind": "recover"}, 0), make_context(SPECS))


def test_finetune_keys_inside_a_lossy_pass_are_refused_with_the_new_form():
    with pytest.raises(RecipeError) as info:
        parse_pass({"kind": "snn", "timesteps": 2, "finetune_epochs": 1, "lr": 0.01}, 3)
    assert "passes[3]" in info.value.problem and 'kind = "recover"' in info.value.fix and "finetune_epochs = 1" in info.value.fix
