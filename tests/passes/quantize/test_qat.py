import dataclasses

import torch

from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.quantize.handler import quantize_module


def test_qat_runs_steps_learns_scales_and_resumes_from_checkpoint(residual_net, specs, calib, tmp_path):
    ckpt = tmp_path / "qat.ckpt"
    config = QuantizeConfig(mode="qat", finetune_steps=3, finetune_batch_size=16, checkpoint=ckpt, calibration_method="minmax")
    ptq, _ = quantize_module(residual_net, specs, calib, dataclasses.replace(config, mode="ptq"))
    qat, stats = quantize_module(residual_net, specs, calib, config)
    assert stats["qat"]["steps"] == 3 and stats["qat"]["resumed_from_step"] == 0 and ckpt.exists()
    scales = lambda m: torch.stack([a.scale.detach() for a in m.act_quants().values()])  # noqa: E731
    assert not torch.equal(scales(ptq), scales(qat))  # LSQ moved the calibrated step sizes
    # the same run again resumes from the checkpoint (at its end: no step is redone) and lands on the same scales
    again, resumed = quantize_module(residual_net, specs, calib, config)
    assert resumed["qat"]["resumed_from_step"] == 3 and resumed["qat"]["steps"] == 3
    assert torch.equal(scales(again), scales(qat))
