"""Distillation fine-tuning: it learns, resumes exactly, and refuses a checkpoint of another run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import DataError, InputError
from repfx_deploy.passes.recovery import FinetuneConfig, distill


class TinyCnnWithDropout(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x))).mean((2, 3))))


def _images(n: int = 96, labeled: bool = True) -> Dataset:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, n).astype(np.int64) if labeled else None
    return Dataset(x=rng.standard_normal((n, 3, 8, 8)).astype(np.float32), y=y, source="random")


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    teacher = TinyCnnWithDropout().eval()
    student = TinyCnnWithDropout()
    return student, teacher


def _agreement(a: nn.Module, b: nn.Module, data: Dataset) -> float:
    a.eval(), b.eval()
    with torch.no_grad():
        x = torch.from_numpy(data.x)
        return float((a(x).argmax(1) == b(x).argmax(1)).float().mean())


def test_distill_moves_student_toward_teacher():
    student, teacher = _pair()
    data = _images(labeled=False)
    before = _agreement(student, teacher, data)
    result = distill(student, teacher, data, FinetuneConfig(steps=80, batch_size=32, lr=0.05, optimizer="adam", progress=False))
    assert result.steps == 80 and result.resumed_from_step == 0 and not result.labeled
    assert _agreement(student, teacher, data) > max(before, 0.6)
    assert result.final_loss < result.avg_loss * 2


def test_distill_uses_labels_and_restores_modes_when_data_is_labeled():
    student, teacher = _pair()
    student.eval()
    teacher.train()
    result = distill(student, teacher, _images(), FinetuneConfig(epochs=1, batch_size=32, alpha=0.5, progress=False))
    assert result.labeled and result.steps == 3 and result.epochs == pytest.approx(1.0)
    assert not student.training and teacher.training
    assert all(p.requires_grad for p in teacher.parameters())


def test_distill_keeps_global_rng_state():
    student, teacher = _pair()
    state = torch.random.get_rng_state()
    distill(student, teacher, _images(), FinetuneConfig(steps=2, batch_size=16, augment="crop-flip", progress=False))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_distill_resume_matches_uninterrupted_run_when_interrupted(tmp_path):
    data = _images()
    config = dict(steps=9, batch_size=32, lr=0.05, augment="crop-flip", checkpoint_every=4, progress=False)

    straight, teacher = _pair()
    distill(straight, teacher, data, FinetuneConfig(**config))

    resumed, teacher = _pair()
    path = tmp_path / "ft.ckpt"
    calls = {"n": 0}

    def interrupt_at_step_6(_student):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return torch.zeros(())

    with pytest.raises(KeyboardInterrupt):
        distill(resumed, teacher, data, FinetuneConfig(checkpoint=path, **config), extra_loss=interrupt_at_step_6)
    assert path.exists()

    # a fresh process would rebuild the student from scratch: start from different weights to prove the load
    resumed, teacher = _pair()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)
    result = distill(resumed, teacher, data, FinetuneConfig(checkpoint=path, **config), extra_loss=lambda s: torch.zeros(()))
    assert result.resumed_from_step == 5 and result.steps == 9
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_distill_refuses_checkpoint_of_other_config(tmp_path):
    student, teacher = _pair()
    path = tmp_path / "ft.ckpt"
    distill(student, teacher, _images(), FinetuneConfig(steps=2, batch_size=32, checkpoint=path, progress=False))
    with pytest.raises(InputError, match="lr"):
        distill(student, teacher, _images(), FinetuneConfig(steps=2, batch_size=32, lr=0.1, checkpoint=path, progress=False))


def test_distill_refuses_checkpoint_of_other_model(tmp_path):
    student, teacher = _pair()
    path = tmp_path / "ft.ckpt"
    distill(student, teacher, _images(), FinetuneConfig(steps=2, batch_size=32, checkpoint=path, progress=False))
    narrower = TinyCnnWithDropout(width=4)
    with pytest.raises(InputError, match="layers or shapes"):
        distill(narrower, teacher, _images(), FinetuneConfig(steps=2, batch_size=32, checkpoint=path, progress=False))


def test_distill_raises_data_error_when_crop_flip_gets_vectors():
    vectors = Dataset(x=np.zeros((8, 4), np.float32), y=None, source="vectors")
    model = nn.Linear(4, 3)
    with pytest.raises(DataError, match="crop-flip"):
        distill(model, nn.Linear(4, 3), vectors, FinetuneConfig(steps=1, augment="crop-flip", progress=False))


@pytest.mark.parametrize(
    "bad",
    [dict(epochs=0), dict(steps=-1), dict(batch_size=0), dict(lr=0), dict(alpha=1.5), dict(temperature=0), dict(optimizer="rmsprop"), dict(augment="mixup")],
)
def test_finetune_config_raises_value_error_when_value_is_bad(bad):
    with pytest.raises(ValueError):
        FinetuneConfig(**bad)
