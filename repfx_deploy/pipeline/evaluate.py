"""Quality of a model on data: top-1 accuracy on labeled data, fidelity to a reference model."""

from __future__ import annotations

from typing import Any

import numpy as np

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.verify import compare


def run_all(runner: Any, samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of ``runner`` for each input list in ``samples``."""
    return [runner.run(s) for s in samples]


def predictions(runner: Any, dataset: Dataset, batch_size: int) -> list[list[np.ndarray]]:
    """Outputs of ``runner`` for every full batch of ``dataset`` (one output list per batch)."""
    return run_all(runner, [[b] for b in dataset.batches(batch_size)])


def top1_accuracy(outputs: list[list[np.ndarray]], dataset: Dataset, batch_size: int) -> float:
    """Share of samples whose arg-max over the first output's last axis equals the label."""
    assert dataset.y is not None
    pred = np.concatenate([o[0].reshape(o[0].shape[0], -1).argmax(-1) for o in outputs])
    return float((pred == dataset.y[: len(pred)]).mean())


def fidelity(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], *, reference_name: str, candidate_name: str) -> dict:
    """Top-1 agreement and output cosine of ``candidate`` against ``reference`` on the same batches."""
    a = compare(reference, candidate, reference_name=reference_name, candidate_name=candidate_name)
    return {
        "reference": reference_name,
        "candidate": candidate_name,
        "top1_agreement": a.top1_agreement,
        "cosine": a.cosine,
        "max_abs_error": a.max_abs_error,
        "samples": a.samples,
    }
