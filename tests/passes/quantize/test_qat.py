import dataclasses

import torch

from repfx_deploy.passes.quantize.config import QuantizeConfig


def test_qat_runs_steps_learns_scales_and_resumes_from_checkpoint(run_quantize, residual_net, specs, calib, tmp_path):
    ckpt = tmp_path / "qat.ckpt"
    config = QuantizeConfig(mode="qat", finetune_steps=3, finetune_batch_size=16, checkpoint=ckpt, calibration_method="minmax")
    ptq_config = dataclasses.replace(config, mode="ptq", finetune_steps=0, finetune_batch_size=64, checkpoint=None)
    ptq = run_quantize(residual_net, specs, calib, ptq_config).module
    qat_result = run_quantize(residual_net, specs, calib, config)
    qat, stats = qat_result.module, qat_result.extras
    assert stats["qat"]["steps"] == 3 and stats["qat"]["resumed_from_step"] == 0 and ckpt.exists()
    scales = lambda m: torch.stack([a.scale.detach() for a in m.act_quants().values()])  # noqa: E731
    assert not torch.equal(scales(ptq), scales(qat))  # LSQ moved the calibrated step sizes
    # the same run again resumes from the checkpoint (at its end: no step is redone) and lands on the same scales
    again = run_quantize(residual_net, specs, calib, config)
    assert again.extras["qat"]["resumed_from_step"] == 3 and again.extras["qat"]["steps"] == 3
    assert torch.equal(scales(again.module), scales(qat))


def test_qat_keys_in_a_ptq_pass_are_refused_pointing_at_qat_and_recover():
    import pytest

    from repfx_deploy.errors import RecipeError
    from repfx_deploy.passes.registry import parse_pass

    with pytest.raises(RecipeError) as info:
        parse_pass({"kind": "quantize", "mode": "ptq", "finetune_steps": 10}, 2)
    assert "passes[2]" in str(info.value) and 'mode = "qat"' in str(info.value) and "recover" in str(info.value)


def test_fused_lsq_kernel_matches_the_reference_lsq_gradients():
    from repfx_deploy.passes.quantize.fakequant import ActQuant, lsq_quantize

    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5) * 2
    aq = ActQuant()
    aq.scale.data.fill_(0.03)
    aq.zero_point.fill_(128)
    aq.state = "learn"
    aq.scale.requires_grad_(True)
    x1 = x.clone().requires_grad_(True)
    aq(x1).square().sum().backward()
    s2 = torch.tensor(0.03, requires_grad=True)
    x2 = x.clone().requires_grad_(True)
    lsq_quantize(x2, s2, torch.tensor(128.0), 0, 255, 1.0 / (100 * 255) ** 0.5).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(aq.scale.grad, s2.grad, rtol=0.02, atol=1e-4)
