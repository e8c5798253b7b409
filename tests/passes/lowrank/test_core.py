"""The pass's behaviour: layers found, budgets met, pins honoured, the result exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lowrank_zoo import ConvBNNet, DepthwiseNet, QuietBranchMLP, TinyEncoder, WideMLP
from protocol_checks import make_context

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import PassError
from repfx_deploy.passes.lowrank import LowRankConfig
from repfx_deploy.passes.lowrank.factorize import Factorized
from repfx_deploy.passes.registry import apply
from repfx_deploy.spec import InputSpec

IMG = (InputSpec("input", (1, 3, 16, 16)),)
VEC = (InputSpec("input", (1, 32)),)
SEQ = (InputSpec("input", (1, 7, 32)),)


def lowrank(model, specs, config: LowRankConfig, calibration=None):
    """The pass through the registry, on the host profile, without BatchNorm re-calibration."""
    from dataclasses import replace

    return apply(model, replace(config, bn_recalibrate=False), make_context(specs, calibration=calibration))


def _cfg(**keys) -> LowRankConfig:
    """A config whose ranks are any integer unless the test says otherwise (the host rounds to 16)."""
    return LowRankConfig(**{"round_to": 1, **keys})


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def _model(cls):
    torch.manual_seed(0)
    return cls().eval()


@pytest.mark.parametrize(("cls", "specs"), [(WideMLP, VEC), (ConvBNNet, IMG), (TinyEncoder, SEQ)])
def test_params_ratio_is_met_and_original_untouched(cls, specs):
    model = _model(cls)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lowrank(model, specs, _cfg(params_ratio=0.6))
    assert _params(result.module) <= 0.6 * _params(model)
    assert _params(result.module) >= 0.45 * _params(model)  # the greedy stops soon after the budget
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.extras["factorized"] >= 1


def test_macs_ratio_is_met():
    from repfx_deploy.analyze.torch_stats import torch_stats

    model = _model(ConvBNNet)
    result = lowrank(model, IMG, _cfg(macs_ratio=0.5, conv_scheme="auto"))
    assert torch_stats(result.module, IMG).macs <= 0.5 * torch_stats(model, IMG).macs


def test_energy_mode_factorizes_a_low_rank_layer_and_keeps_output_close():
    model = _model(WideMLP)
    with torch.no_grad():  # fc1 of rank 4 plus a little noise: 99.9 % of its energy in 4 directions
        model.fc1.weight.copy_(torch.randn(64, 4) @ torch.randn(4, 32) + 1e-3 * torch.randn(64, 32))
    result = lowrank(model, VEC, _cfg(energy=0.999, round_to=1))
    x = torch.randn(8, 32)
    # random fc2 has a flat spectrum (no cheaper rank keeps 99.9 %); the 16 -> 4 head can never get cheaper
    assert result.module.fc1.rank == 4
    assert not isinstance(result.module.fc2, Factorized) and not isinstance(result.module.head, Factorized)
    assert torch.allclose(result.module(x), model(x), atol=0.05)
    assert all(v >= 0.999 for v in (r["energy_kept"] for r in result.extras["layers"] if r["scheme"] != "dense"))


def test_layer_ranks_pin_a_rank_and_keep_a_layer_dense():
    model = _model(WideMLP)
    result = lowrank(model, VEC, _cfg(layer_ranks={"fc1": 5, "fc2": "dense"}))
    assert result.module.fc1.rank == 5 and not isinstance(result.module.fc2, Factorized)
    assert result.extras["mode"] == "pinned"


def test_layer_rank_that_saves_nothing_leaves_layer_dense_with_note():
    result = lowrank(_model(WideMLP), VEC, _cfg(layer_ranks={"head": 4}))
    assert not isinstance(result.module.head, Factorized) and "head" in result.extras["notes"][0]


def test_depthwise_conv_is_never_factorized():
    result = lowrank(_model(DepthwiseNet), (InputSpec("input", (1, 16, 8, 8)),), _cfg(params_ratio=0.8))
    assert not isinstance(result.module.dw, Factorized) and isinstance(result.module.pw, Factorized)


def test_round_to_makes_every_rank_a_multiple():
    result = lowrank(_model(ConvBNNet), IMG, _cfg(params_ratio=0.6, round_to=4))
    assert all(r["rank"] % 4 == 0 for r in result.extras["layers"] if r["rank"])


def test_unreachable_budget_raises_pass_error():
    with pytest.raises(PassError, match="cannot be reached"):
        lowrank(_model(WideMLP), VEC, _cfg(params_ratio=0.05, round_to=8))


def test_sensitivity_criterion_needs_calibration_data():
    with pytest.raises(PassError, match="calibration"):
        lowrank(_model(WideMLP), VEC, _cfg(params_ratio=0.6, criterion="sensitivity"))


def test_sensitivity_criterion_spends_the_cut_where_the_output_does_not_notice():
    model = _model(QuietBranchMLP)
    calib = Dataset(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), None, "random")
    config = dict(params_ratio=0.7, round_to=1)
    energy = lowrank(model, VEC, _cfg(**config))
    measured = lowrank(model, VEC, _cfg(**config, criterion="sensitivity", sensitivity_points=16), calibration=calib)
    x = torch.from_numpy(calib.x)
    with torch.no_grad():
        err = {
            k: float(((r.module(x) - model(x)) ** 2).mean()) for k, r in (("energy", energy), ("measured", measured))
        }
    # energy sees two alike spectra and cuts both; the measured loss cuts the quiet branch and keeps the loud one
    assert isinstance(measured.module.quiet, Factorized) and not isinstance(measured.module.loud, Factorized)
    assert err["measured"] < 0.1 * err["energy"]
    assert set(measured.extras["sensitivity"]) == {"loud", "quiet"}


def test_factorized_encoder_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    from repfx_deploy.lower.onnx_export import export_onnx
    from repfx_deploy.measure.runtimes import OrtRunner

    result = lowrank(_model(TinyEncoder), SEQ, _cfg(params_ratio=0.6))
    exported = export_onnx(result.module, SEQ, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((1, 7, 32)).astype(np.float32)
    ort = OrtRunner(exported.path, 1).run([x])[0]
    with torch.no_grad():
        ref = result.module(torch.from_numpy(x)).numpy()
    assert np.allclose(ort, ref, atol=1e-4)


def test_encoder_attention_projections_are_unfused_and_factorized():
    model = _model(TinyEncoder)
    x = torch.randn(2, 7, 32)
    unfused = lowrank(model, SEQ, _cfg(layer_ranks={"*": "dense"}))
    with torch.no_grad():  # stand-ins for the fused attention compute the same function
        assert torch.allclose(unfused.module(x), model(x), atol=1e-5)
    result = lowrank(model, SEQ, _cfg(layer_ranks={"*q_proj": 32, "*linear1": 8}, round_to=1))
    names = {r["layer"] for r in result.extras["layers"]}
    assert "encoder.layers.0.self_attn.q_proj" in names and "encoder.layers.1.linear2" in names
    layer = result.module.encoder.layers[0]
    # rank 8 of 32 -> 64 is cheaper; rank 32 of a 32 x 32 projection is not, so it stays dense
    assert isinstance(layer.linear1, Factorized) and layer.linear1.rank == 8
    assert not isinstance(layer.self_attn.q_proj, Factorized)
