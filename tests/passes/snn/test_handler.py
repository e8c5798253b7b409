import pytest
import torch
from protocol_checks import make_context
from snn_nets import ConvBnPoolNet, dataset, make

from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes.registry import apply, parse_pass
from repfx_deploy.passes.snn.simulate import SpikingNet
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 1, 8, 8)),)


def _config(**options):
    return parse_pass({"kind": "snn", **options}, 0)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"timestep": 2}, r"Unknown key.*'timestep' in passes\[0\]"),
        ({"timesteps": 0}, "timesteps"),
        ({"timesteps": 2.5}, r"passes\[0\]\.timesteps must be an integer"),
        ({"percentile": 101}, "percentile"),
        ({"iir": True, "timesteps": 6}, "iir_start"),
        ({"iir": True, "timesteps": 1, "iir_stages": [5, 2]}, "iir_stages"),
        ({"iir": True, "timesteps": 1, "iir_stages": [2, 5, 1]}, "iir_stages"),
        ({"iir_stages": 5}, r"passes\[0\]\.iir_stages must be a list"),
        ({"surrogate": "relu"}, "surrogate"),
        ({"epochs_per_stage": 0}, "epochs_per_stage"),
        ({"maxpool": "avg"}, "maxpool"),
        ({"iir": "yes"}, r"passes\[0\]\.iir must be true or false"),
    ],
)
def test_bad_recipe_options_raise_recipe_error_naming_the_key(options, match):
    with pytest.raises(RecipeError, match=match):
        _config(**options)


def test_stages_default_from_iir_start_down_to_timesteps():
    assert _config(iir=True, timesteps=1).stages() == (5, 4, 3, 2, 1)
    assert _config(iir=True, timesteps=1, iir_stages=[5, 2, 1]).stages() == (5, 2, 1)
    assert _config(timesteps=8).stages() == ()


def test_apply_without_calibration_raises_pass_error():
    with pytest.raises(PassError, match="calibration"):
        apply(make(ConvBnPoolNet), _config(timesteps=4), make_context(SPECS))


def test_apply_converts_retrains_and_reports(tmp_path):
    data = dataset((1, 8, 8), n=32, classes=4)
    config = _config(timesteps=1, iir=True, iir_stages=[2, 1], steps_per_stage=2, batch_size=16,
                     checkpoint_dir=str(tmp_path / "ckpt"))
    result = apply(make(ConvBnPoolNet), config, make_context(SPECS, calibration=data))
    assert isinstance(result.module, SpikingNet) and result.module.timesteps == 1
    assert result.decisions == {"timesteps": 1}
    extras = result.extras
    assert extras["conversion"]["bn_folded"] == 2
    assert [s["timesteps"] for s in extras["iir_stages"]] == [2, 1]
    assert extras["spikes"]["timesteps"] == 1 and extras["spikes"]["energy_estimate"]["is_estimate"] is True
    with torch.no_grad():
        assert result.module(torch.from_numpy(data.x[:3])).shape == (3, 4)


def test_apply_refuses_iir_on_unlabeled_data_without_distillation_only():
    data = dataset((1, 8, 8), n=16)
    unlabeled = type(data)(x=data.x, y=None, source="random")
    with pytest.raises(PassError, match="labels"):
        apply(make(ConvBnPoolNet), _config(timesteps=1, iir=True, kd_alpha=0.5), make_context(SPECS, calibration=unlabeled))
