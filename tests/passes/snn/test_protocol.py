"""The snn pass keeps the pass protocol: one site (the network's T), prepare once, apply many."""

import torch
from protocol_checks import check_protocol, make_context
from snn_nets import ConvBnPoolNet, dataset, make

from repfx_deploy.passes.registry import parse_pass
from repfx_deploy.passes.snn.handler import SnnPass
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 1, 8, 8)),)


def test_snn_protocol_holds_when_converting_only():
    data = dataset((1, 8, 8), n=32, classes=4)
    config = parse_pass({"kind": "snn", "timesteps": 3}, 0)
    default, moved = check_protocol(make(ConvBnPoolNet), config, make_context(SPECS, calibration=data),
                                    (torch.from_numpy(data.x[:4]),), {"timesteps": 8})
    assert default.module.timesteps == 3 and moved.module.timesteps == 8


def test_snn_space_offers_powers_of_two_and_the_default_when_converting_only():
    data = dataset((1, 8, 8), n=16, classes=4)
    space = SnnPass().space(make(ConvBnPoolNet), parse_pass({"kind": "snn", "timesteps": 3}, 0), make_context(SPECS, calibration=data))
    (site,) = space.sites
    assert (site.name, site.knob, site.default) == ("timesteps", "timesteps", 3)
    assert site.choices == (1, 2, 3, 4, 8, 16, 32, 64)


def test_snn_protocol_holds_with_iir_and_offers_each_stage(tmp_path):
    data = dataset((1, 8, 8), n=32, classes=4)
    config = parse_pass({"kind": "snn", "timesteps": 1, "iir": True, "iir_stages": [3, 2, 1], "steps_per_stage": 2,
                         "batch_size": 16}, 0)
    default, moved = check_protocol(make(ConvBnPoolNet), config, make_context(SPECS, calibration=data),
                                    (torch.from_numpy(data.x[:4]),), {"timesteps": 2})
    assert moved.module.timesteps == 2 and [s["timesteps"] for s in moved.extras["iir_stages"]] == [3, 2]
    assert config.with_assignment({"timesteps": 2}).iir_stages == (3, 2)
