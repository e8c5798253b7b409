import pytest
import torch
from snn_nets import ConvBnPoolNet, dataset, make

from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes.registry import PassContext, get_handler
from repfx_deploy.passes.snn.config import SnnConfig
from repfx_deploy.passes.snn.simulate import SpikingNet
from repfx_deploy.spec import InputSpec


@pytest.mark.parametrize(
    "options, match",
    [
        ({"timestep": 2}, "unknown option"),
        ({"timesteps": 0}, "timesteps"),
        ({"timesteps": 2.5}, "timesteps"),
        ({"percentile": 101}, "percentile"),
        ({"iir": True, "timesteps": 6}, "iir_start"),
        ({"iir": True, "timesteps": 1, "iir_stages": [5, 2]}, "iir_stages"),
        ({"iir": True, "timesteps": 1, "iir_stages": [2, 5, 1]}, "iir_stages"),
        ({"iir_stages": 5}, "iir_stages"),
        ({"surrogate": "relu"}, "surrogate"),
        ({"epochs_per_stage": 0}, "epochs_per_stage"),
        ({"maxpool": "avg"}, "maxpool"),
        ({"iir": "yes"}, "iir"),
    ],
)
def test_bad_recipe_options_raise_recipe_error(options, match):
    with pytest.raises(RecipeError, match=match):
        SnnConfig.from_options(options)


def test_stages_default_from_iir_start_down_to_timesteps():
    assert SnnConfig.from_options({"iir": True, "timesteps": 1}).stages() == (5, 4, 3, 2, 1)
    assert SnnConfig.from_options({"iir": True, "timesteps": 1, "iir_stages": [5, 2, 1]}).stages() == (5, 2, 1)
    assert SnnConfig.from_options({"timesteps": 8}).stages() == ()


def _context(calibration=None, train=None):
    return PassContext(input_specs=(InputSpec("input", (1, 1, 8, 8)),), calibration=calibration, train=train)


def test_handler_without_calibration_raises_pass_error():
    with pytest.raises(PassError, match="calibration"):
        get_handler("snn")(make(ConvBnPoolNet), {"timesteps": 4}, _context())


def test_handler_converts_retrains_and_reports(tmp_path):
    data = dataset((1, 8, 8), n=32, classes=4)
    options = {"timesteps": 1, "iir": True, "iir_stages": [2, 1], "steps_per_stage": 2, "batch_size": 16,
               "checkpoint_dir": str(tmp_path / "ckpt")}
    result = get_handler("snn")(make(ConvBnPoolNet), options, _context(calibration=data))
    assert isinstance(result.module, SpikingNet) and result.module.timesteps == 1
    stats = result.stats
    assert stats["conversion"]["bn_folded"] == 2
    assert [s["timesteps"] for s in stats["iir_stages"]] == [2, 1]
    assert stats["spikes"]["timesteps"] == 1 and stats["spikes"]["energy_estimate"]["is_estimate"] is True
    with torch.no_grad():
        assert result.module(torch.from_numpy(data.x[:3])).shape == (3, 4)


def test_handler_refuses_iir_on_unlabeled_data_without_distillation_only():
    data = dataset((1, 8, 8), n=16)
    unlabeled = type(data)(x=data.x, y=None, source="random")
    with pytest.raises(PassError, match="labels"):
        get_handler("snn")(make(ConvBnPoolNet), {"timesteps": 1, "iir": True, "kd_alpha": 0.5}, _context(calibration=unlabeled))
