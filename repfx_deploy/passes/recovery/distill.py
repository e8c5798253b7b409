"""Fine-tune a student against a teacher with knowledge distillation, resumable from a checkpoint.

The loss per batch is ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))`` plus
``(1 - alpha) * cross-entropy`` when the data is labeled (distillation alone otherwise), plus ``extra_loss``.
The teacher runs in eval mode without gradients; the student trains in place.

Reproducibility, which is what makes resuming exact: the batch order of epoch ``e`` is a permutation seeded with
``(seed, e)``, augmentation and dropout of step ``s`` are seeded with ``(seed, s)``, and the learning rate is a
function of ``s`` alone (cosine from ``lr`` to 0 over the whole run). A run interrupted at any step and resumed
from its checkpoint therefore ends where the uninterrupted run ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from repfx_deploy.errors import DataError
from repfx_deploy.passes.recovery import checkpoint as ckpt

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from repfx_deploy.data.datasets import Dataset

# Config fields that do not change the trained weights, so a checkpoint stays valid when they change.
_NOT_TRAJECTORY = ("checkpoint", "checkpoint_every", "progress")


@dataclass(frozen=True)
class FinetuneConfig:
    """How long and how to fine-tune. ``steps > 0`` wins over ``epochs``.

    ``alpha`` weighs the distillation loss; ``1 - alpha`` goes to cross-entropy when the data has labels.
    ``temperature`` 4 softens the teacher's distribution enough that its ranking of the wrong classes (the
    "dark knowledge") carries signal. ``augment="crop-flip"`` (pad-4 random crop + horizontal flip, for
    N x C x H x W images) is the standard CIFAR augmentation; without it a few epochs on a small set overfit.
    ``checkpoint``: resume from it when it exists, and save to it atomically every ``checkpoint_every`` steps,
    at the end, and when interrupted.
    """

    epochs: float = 1.0
    steps: int = 0
    batch_size: int = 64
    lr: float = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"  # sgd: momentum 0.9, nesterov
    weight_decay: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.9
    augment: Literal["none", "crop-flip"] = "none"
    checkpoint: Path | None = None
    checkpoint_every: int = 200
    seed: int = 0
    progress: bool = True  # a rich progress bar on stderr

    def __post_init__(self) -> None:
        if self.steps < 0 or (self.steps == 0 and not self.epochs > 0):
            raise ValueError(
                f"FinetuneConfig needs epochs > 0 or steps > 0 (got epochs={self.epochs}, steps={self.steps})"
            )
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"FinetuneConfig needs batch_size >= 1 and checkpoint_every >= 1 (got {self.batch_size}, {self.checkpoint_every})"
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"FinetuneConfig needs lr > 0 and weight_decay >= 0 (got {self.lr}, {self.weight_decay})")
        if not self.temperature > 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"FinetuneConfig needs temperature > 0 and 0 <= alpha <= 1 (got {self.temperature}, {self.alpha})"
            )
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"FinetuneConfig optimizer must be 'sgd' or 'adam', not {self.optimizer!r}")
        if self.augment not in ("none", "crop-flip"):
            raise ValueError(f"FinetuneConfig augment must be 'none' or 'crop-flip', not {self.augment!r}")
        if self.checkpoint is not None and not isinstance(self.checkpoint, Path):
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))

    def total_steps(self, samples: int) -> int:
        """Optimizer steps this config runs on ``samples`` samples (an epoch is ``samples // batch_size`` steps)."""
        return (
            self.steps
            if self.steps > 0
            else max(1, math.ceil(self.epochs * _steps_per_epoch(samples, self.batch_size)))
        )


@dataclass(frozen=True)
class FinetuneResult:
    """What ``distill`` did. ``steps`` counts all steps of the run including those before a resume;
    ``avg_loss`` averages the steps run in this call (NaN when it ran none)."""

    steps: int
    epochs: float
    final_loss: float
    avg_loss: float
    resumed_from_step: int
    seconds: float
    labeled: bool

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    config: FinetuneConfig,
    *,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
) -> FinetuneResult:
    """Train ``student`` in place to match ``teacher`` on ``data`` (labels used when present) for
    ``config``'s budget; ``extra_loss(student)`` is added to every step's loss (e.g. a regularizer).

    Both modules must map a batch of ``data.x`` to logits ``N x classes`` (other output shapes are
    distilled over their last dimension). Modes are restored afterwards. A checkpoint written by a run with
    another model or config is refused with ``InputError``; an empty data set is a ``DataError``.
    """
    import torch

    if data is None or len(data) == 0:
        raise DataError(
            "Fine-tuning needs training samples, but the data set is empty or missing.",
            "Give training data (the recipe's [data] train).",
        )
    if config.augment == "crop-flip" and data.x.ndim != 4:
        raise DataError(
            f"augment='crop-flip' needs images N x C x H x W, but the samples have shape {tuple(data.x.shape)}.",
            'Set augment = "none" for non-image inputs.',
        )
    n = len(data)
    batch = min(config.batch_size, n)
    per_epoch = _steps_per_epoch(n, config.batch_size)
    total = config.total_steps(n)
    labeled = data.labeled and config.alpha < 1.0
    trajectory = {k: v for k, v in asdict(config).items() if k not in _NOT_TRAJECTORY}
    trajectory |= {"samples": n, "labeled": labeled, "extra_loss": extra_loss is not None}
    digest = ckpt.fingerprint(student, trajectory)

    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("distill: the student has no trainable parameters")
    device = params[0].device
    optimizer = _make_optimizer(params, config)
    start = 0
    if config.checkpoint is not None:
        state = ckpt.load(config.checkpoint, digest=digest, trajectory=trajectory)
        if state is not None:
            student.load_state_dict(state["student"])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])

    x_all = torch.from_numpy(data.x)
    y_all = torch.from_numpy(data.y).long() if labeled else None
    modes = (student.training, teacher.training)
    teacher_grads = [p.requires_grad for p in teacher.parameters()]
    losses: list[float] = []
    step = start
    began = time.perf_counter()
    order, order_epoch = None, -1
    buffers: dict = {}
    updating = False
    try:
        student.train()
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        # fork_rng: the per-step seeding below must not disturb the caller's global random state
        with torch.random.fork_rng(devices=[]), _progress(config.progress, total, start) as advance:
            while step < total:
                epoch, pos = divmod(step, per_epoch)
                if epoch != order_epoch:
                    order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(config.seed, epoch)))
                    order_epoch = epoch
                assert order is not None  # drawn at the first step (order_epoch starts at -1)
                idx = order[pos * batch : (pos + 1) * batch]
                torch.manual_seed(_mix(config.seed, 1_000_003 + step))  # dropout, augmentation
                xb = x_all[idx]
                if config.augment == "crop-flip":
                    xb = _crop_flip(xb)
                xb = xb.to(device)
                # the forward pass updates BatchNorm running stats before the step is complete; keep them so an
                # interrupt mid-step can roll back to the last completed step
                buffers = {k: b.detach().clone() for k, b in student.named_buffers()}
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                with torch.no_grad():
                    t_out = _logits(teacher(xb))
                s_out = _logits(student(xb))
                loss = config.alpha * _kd_loss(s_out, t_out, config.temperature)
                if y_all is not None:
                    loss = loss + (1.0 - config.alpha) * torch.nn.functional.cross_entropy(s_out, y_all[idx].to(device))
                if extra_loss is not None:
                    loss = loss + extra_loss(student)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                updating = True
                optimizer.step()
                step += 1
                updating = False
                losses.append(float(loss.detach()))
                advance(losses[-1])
                if config.checkpoint is not None and (step % config.checkpoint_every == 0 or step == total):
                    ckpt.save(
                        config.checkpoint,
                        student=student,
                        optimizer=optimizer,
                        step=step,
                        digest=digest,
                        trajectory=trajectory,
                    )
    except KeyboardInterrupt:
        # keep the steps already done: the next call with the same checkpoint resumes from here. An interrupt
        # inside optimizer.step() leaves weights half-updated, so then only the last periodic checkpoint stands.
        if config.checkpoint is not None and step > start and not updating:
            named = dict(student.named_buffers())
            with torch.no_grad():
                for k, b in buffers.items():
                    named[k].copy_(b)
            ckpt.save(
                config.checkpoint, student=student, optimizer=optimizer, step=step, digest=digest, trajectory=trajectory
            )
        raise
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
        for p, g in zip(teacher.parameters(), teacher_grads):
            p.requires_grad_(g)
    return FinetuneResult(
        steps=step,
        epochs=step / per_epoch,
        final_loss=losses[-1] if losses else math.nan,
        avg_loss=sum(losses) / len(losses) if losses else math.nan,
        resumed_from_step=start,
        seconds=time.perf_counter() - began,
        labeled=labeled,
    )


def _steps_per_epoch(samples: int, batch_size: int) -> int:
    # a remainder smaller than a batch is dropped each epoch (it is a different subset every epoch)
    return max(1, samples // min(batch_size, samples))


def _mix(seed: int, k: int) -> int:
    """A seed for stream ``k`` of run ``seed`` (distinct streams for distinct pairs)."""
    return (seed * 0x9E3779B1 + k * 0x85EBCA77) % (2**63 - 1)


def _make_optimizer(params: list, config: FinetuneConfig):
    import torch

    if config.optimizer == "adam":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


def _logits(out):
    """The tensor to distill: a model returning a tuple/list/dict is distilled on its first output."""
    if isinstance(out, (tuple, list)):
        return _logits(out[0])
    if isinstance(out, dict):
        return _logits(next(iter(out.values())))
    return out


def _kd_loss(student_logits, teacher_logits, temperature: float):
    import torch.nn.functional as F

    s = student_logits.reshape(-1, student_logits.shape[-1]) / temperature
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1]) / temperature
    # T^2 keeps the gradient scale of the soft loss comparable to cross-entropy's as T changes (Hinton et al.)
    return (
        F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
        * temperature**2
    )


def _crop_flip(x):
    """Pad-4 random crop and random horizontal flip, per sample (uses the global RNG, seeded per step)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,)).tolist()
    dx = torch.randint(0, 9, (n,)).tolist()
    flip = (torch.rand(n) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if any(flip):
        mask = torch.tensor(flip)
        out[mask] = out[mask].flip(-1)
    return out


class _NoProgress:
    def __enter__(self):
        return lambda loss: None

    def __exit__(self, *exc) -> None:
        return None


class _RichProgress:
    """A rich progress bar on stderr showing steps and the running loss."""

    def __init__(self, total: int, start: int) -> None:
        self.total, self.start = total, start

    def __enter__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("fine-tune"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.__enter__()
        task = self.bar.add_task("fine-tune", total=self.total, completed=self.start, loss=float("nan"))
        return lambda loss: self.bar.update(task, advance=1, loss=loss)

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


def _progress(enabled: bool, total: int, start: int):
    return _RichProgress(total, start) if enabled else _NoProgress()
