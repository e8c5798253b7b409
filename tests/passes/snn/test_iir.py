import torch
from snn_nets import ConvBnPoolNet, dataset, make

from repfx_deploy.passes.snn.config import SnnConfig
from repfx_deploy.passes.snn.convert import convert
from repfx_deploy.passes.snn.iir import iir_train


def _setup(tmp_path, stages=(3, 2, 1)):
    data = dataset((1, 8, 8), n=48, classes=4)
    config = SnnConfig(timesteps=stages[-1], iir=True, iir_stages=stages, steps_per_stage=3, batch_size=16, checkpoint_dir=tmp_path / "ckpt")
    ann = make(ConvBnPoolNet)
    snn, _ = convert(ann, [torch.from_numpy(data.x)], config)
    return ann, snn, data, config


def test_stages_run_from_highest_T_down_and_end_at_timesteps(tmp_path):
    ann, snn, data, config = _setup(tmp_path)
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    seen = []
    records = iir_train(snn, ann, data, config, after_stage=lambda T, s: seen.append((T, s.timesteps)) or {"checked": True})
    assert [r["timesteps"] for r in records] == [3, 2, 1] and seen == [(3, 3), (2, 2), (1, 1)]
    assert all(r["steps"] == 3 and r["checked"] for r in records)
    assert snn.timesteps == 1 and all(n.timesteps == 1 for _, n in snn.neurons())
    assert any(not torch.equal(before[k], v) for k, v in snn.state_dict().items())
    # thresholds are trained like the weights
    assert any(float(before[f"body.{name}.threshold"]) != float(n.threshold.detach()) for name, n in snn.neurons())
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["stage-3-2-1.ckpt", "stage-3-2.ckpt", "stage-3.ckpt"]


def test_rerun_resumes_finished_stages_without_training(tmp_path):
    ann, snn, data, config = _setup(tmp_path)
    iir_train(snn, ann, data, config)
    _, fresh, _, _ = _setup(tmp_path)
    records = iir_train(fresh, ann, data, config)
    assert all(r["resumed_from_step"] == r["steps"] == 3 for r in records)
    for (k, a), b in zip(snn.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_interrupted_run_resumes_at_the_stage_it_stopped_in(tmp_path):
    # a run that only finished stage 3 (as if stopped there), then the full schedule
    ann, snn, data, config = _setup(tmp_path)
    iir_train(snn, ann, data, SnnConfig(**{**config.__dict__, "timesteps": 3, "iir_stages": (3,)}))
    _, resumed, _, _ = _setup(tmp_path)
    records = iir_train(resumed, ann, data, config)
    assert [r["resumed_from_step"] for r in records] == [3, 0, 0]
    _, straight, _, _ = _setup(tmp_path / "other")
    iir_train(straight, ann, data, SnnConfig(**{**config.__dict__, "checkpoint_dir": tmp_path / "other" / "ckpt"}))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
