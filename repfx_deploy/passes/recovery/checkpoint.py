"""Fine-tuning checkpoints: written atomically, and refused on resume when they belong to another run.

A checkpoint holds the student's weights, the optimizer state and the number of steps done. Data order,
augmentation and dropout are derived from ``(seed, step)``, so nothing else is needed for a resumed run to
follow the same trajectory as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.atomic import atomic_file
from repfx_deploy.errors import InputError

if TYPE_CHECKING:
    import torch.nn as nn

FORMAT = "repfx-finetune-checkpoint/1"


def fingerprint(student: nn.Module, trajectory: dict[str, Any]) -> str:
    """A digest of what decides the training trajectory: the student's parameter/buffer names and shapes and
    the config fields that change the result (not the checkpoint path or the progress bar)."""
    shapes = {name: list(t.shape) for name, t in student.state_dict().items()}
    blob = json.dumps({"shapes": shapes, "trajectory": trajectory}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save(path: Path, *, student: nn.Module, optimizer: Any, step: int, digest: str, trajectory: dict[str, Any]) -> None:
    """Write the checkpoint to a temporary sibling and rename it into place (an interrupt never leaves half a file)."""
    import torch

    state = {
        "format": FORMAT,
        "step": step,
        "fingerprint": digest,
        "trajectory": json.dumps(trajectory, sort_keys=True, default=str),
        "student": student.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    with atomic_file(Path(path)) as tmp:
        torch.save(state, tmp)


def load(path: Path, *, digest: str, trajectory: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none; ``InputError`` when it is unreadable or was
    written by a run with another model or config."""
    import torch

    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            f"Cannot read the fine-tuning checkpoint {str(path)!r}: {e}",
            "Delete it to start over, or point checkpoint elsewhere.",
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(
            f"{str(path)!r} is not a repfx-deploy fine-tuning checkpoint.",
            "Point checkpoint at a new path, or delete that file.",
        )
    if state["fingerprint"] != digest:
        saved = json.loads(state.get("trajectory", "{}"))
        changed = sorted(k for k in set(saved) | set(trajectory) if saved.get(k) != trajectory.get(k))
        what = f"config fields {', '.join(changed)} differ" if changed else "the model's layers or shapes differ"
        raise InputError(
            f"The fine-tuning checkpoint {str(path)!r} was written by another run ({what}), so resuming from it "
            "would mix two trainings.",
            "Delete the checkpoint to start over, point checkpoint at a new path, or restore the original settings.",
        )
    return state
