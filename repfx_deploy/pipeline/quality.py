"""Quality of a model on data: top-1 accuracy and loss on labeled data, fidelity to a reference model's outputs.

``EvalData`` says what a model is evaluated on; ``score`` computes all of it on one runner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.data.validate import check_labels_fit
from repfx_deploy.errors import DataError, InputError
from repfx_deploy.measure.runner import run_all
from repfx_deploy.verify import compare

if TYPE_CHECKING:
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import TargetProfile

log = logging.getLogger("repfx_deploy.pipeline")


@dataclass(frozen=True)
class EvalData:
    """What a model is evaluated on; every part is optional.

    ``eval``: labeled data for accuracy and loss, run in batches of ``batch_size`` (0: the model's own batch).
    ``inputs``: input lists (one per sample) for fidelity against ``reference`` (the reference model's outputs
    on them, named ``reference_name``; ``inputs_source`` says where the inputs came from) and for verification.
    ``timing_inputs``: what latency is measured on (default: the first of ``inputs``, else seeded random inputs).
    """

    eval: Dataset | None = None
    batch_size: int = 0
    inputs: Sequence[Sequence[np.ndarray]] = ()
    reference: Sequence[Sequence[np.ndarray]] | None = None
    reference_name: str = "reference"
    inputs_source: str = ""
    timing_inputs: Sequence[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.reference is not None and len(self.reference) != len(self.inputs):
            raise ValueError(f"reference has {len(self.reference)} output lists for {len(self.inputs)} inputs")


def predictions(runner: Any, dataset: Dataset, batch_size: int) -> list[list[np.ndarray]]:
    """Outputs of ``runner`` for every full batch of ``dataset`` (one output list per batch)."""
    return run_all(runner, [[b] for b in dataset.batches(batch_size)])


def _scores(outputs: list[list[np.ndarray]]) -> np.ndarray:
    """The first output of every batch as one samples x classes matrix."""
    return np.concatenate([o[0].reshape(o[0].shape[0], -1) for o in outputs])


def top1_accuracy(outputs: list[list[np.ndarray]], dataset: Dataset, batch_size: int) -> float:
    """Share of samples whose arg-max over the first output's last axis equals the label.

    A sample whose scores are not all finite has no prediction and counts as wrong (the arg-max of a NaN row
    is its first class, which once scored a NaN-producing model 1.0 on labels that were all 0).
    """
    assert dataset.y is not None
    scores = _scores(outputs)
    pred = np.where(np.isfinite(scores).all(axis=1), scores.argmax(-1), -1)
    return float((pred == dataset.y[: len(pred)]).mean())


def cross_entropy(outputs: list[list[np.ndarray]], dataset: Dataset) -> float | None:
    """Mean softmax cross-entropy of the first output (logits over the last axis) against the labels; ``None``
    when the outputs are not class scores the labels index."""
    assert dataset.y is not None
    logits = np.concatenate([o[0].reshape(o[0].shape[0], -1) for o in outputs]).astype(np.float64)
    labels = dataset.y[: len(logits)].astype(np.int64)
    if logits.ndim != 2 or not len(labels) or labels.min() < 0 or labels.max() >= logits.shape[1]:
        return None
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    return loss if np.isfinite(loss) else None  # NaN or infinite scores: no loss to report


def fidelity(
    reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], *, reference_name: str, candidate_name: str
) -> dict:
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


def score(
    runner: Any, data: EvalData, specs: tuple[InputSpec, ...], candidate_name: str
) -> tuple[float | None, float | None, dict | None]:
    """``(accuracy, loss, fidelity)`` of ``runner`` on ``data``; each ``None`` where the data has no part for it."""
    accuracy = loss = fid = None
    if data.eval is not None and data.eval.y is not None:
        evaluation, labels, batch = data.eval, data.eval.y, data.batch_size or specs[0].shape[0]
        if len(evaluation) < batch:
            raise DataError(
                f"The evaluation data {evaluation.source!r} has {len(evaluation)} sample(s), fewer than one batch "
                f"of {batch} (the model's static batch).",
                f"Give at least {batch} labeled samples (and a multiple of {batch}: a remainder is not scored).",
            )
        outputs = predictions(runner, evaluation, batch)
        scores = _scores(outputs)
        check_labels_fit(labels[: len(scores)], scores.shape[1], evaluation.source, evaluation.positions)
        broken = int((~np.isfinite(scores).all(axis=1)).sum())
        if broken:
            log.warning(
                "%s: %d of %d evaluation samples gave NaN or infinite outputs; they count as wrong",
                candidate_name,
                broken,
                len(scores),
            )
        accuracy, loss = top1_accuracy(outputs, evaluation, batch), cross_entropy(outputs, evaluation)
    if data.reference is not None and data.inputs:
        fid = fidelity(
            [list(r) for r in data.reference],
            run_all(runner, [list(s) for s in data.inputs]),
            reference_name=data.reference_name,
            candidate_name=candidate_name,
        )
        fid["data"] = data.inputs_source
    return accuracy, loss, fid


def choose_quality_runtime(forms: tuple[str, ...], asked: str | None, profile: TargetProfile) -> str | None:
    """Where quality is scored: ``asked``, else ONNX Runtime (the deployed form) when there is an ONNX form,
    else torch, else TVM where its artifact runs here; ``None`` when nothing can run the model here."""
    from repfx_deploy.compile.link import runs_here

    if asked is not None:
        if asked not in forms:
            raise InputError(
                f"Cannot score quality on {asked}: the model has no form it runs.", "Pass the torch model."
            )
        return asked
    for rt in ("onnxruntime", "torch"):
        if rt in forms:
            return rt
    return "tvm" if runs_here(profile.target_dict, profile.link) else None
