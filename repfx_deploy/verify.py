"""Compare the outputs of two runtimes on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from repfx_deploy.errors import VerificationError


@dataclass(frozen=True)
class Agreement:
    """How closely ``got`` matches ``reference``, over all outputs flattened together.

    ``cosine`` is of the flattened outputs; ``top1_agreement`` is the share of rows whose arg-max over the last
    axis agrees (only for 2-D float outputs such as logits, else ``None``).
    """

    reference: str
    candidate: str
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    top1_agreement: float | None
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(
    reference: Sequence[Sequence[np.ndarray]],
    candidate: Sequence[Sequence[np.ndarray]],
    *,
    reference_name: str,
    candidate_name: str,
) -> Agreement:
    """Compare per-sample output lists (``reference[i]`` is the output list for sample ``i``)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("compare needs the same, non-zero number of samples on both sides")
    ref_flat, cand_flat, agree, rows = [], [], 0, 0
    for ref_outs, cand_outs in zip(reference, candidate):
        if len(ref_outs) != len(cand_outs):
            raise VerificationError(
                f"{reference_name} gives {len(ref_outs)} outputs but {candidate_name} gives {len(cand_outs)}.",
                "Re-export the model; the artifact does not match its source.",
            )
        for r, c in zip(ref_outs, cand_outs):
            r = np.asarray(r, dtype=np.float64)
            c = np.asarray(c, dtype=np.float64)
            if r.shape != c.shape:
                raise VerificationError(
                    f"{reference_name} output shape {r.shape} differs from {candidate_name} shape {c.shape}.",
                    "Re-export the model; the artifact does not match its source.",
                )
            ref_flat.append(r.ravel())
            cand_flat.append(c.ravel())
        first_r, first_c = np.asarray(ref_outs[0]), np.asarray(cand_outs[0])
        if first_r.ndim == 2 and first_r.dtype.kind == "f":
            agree += int((first_r.argmax(-1) == first_c.argmax(-1)).sum())
            rows += first_r.shape[0]
    a, b = np.concatenate(ref_flat), np.concatenate(cand_flat)
    diff = np.abs(a - b)
    return Agreement(
        reference=reference_name,
        candidate=candidate_name,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        cosine=_cosine(a, b),
        top1_agreement=(agree / rows) if rows else None,
        samples=len(reference),
    )


def require_close(agreement: Agreement, *, atol: float, min_cosine: float = 0.999) -> None:
    """Raise ``VerificationError`` when ``agreement`` is worse than the tolerances."""
    if agreement.max_abs_error > atol or agreement.cosine < min_cosine:
        raise VerificationError(
            f"{agreement.candidate} disagrees with {agreement.reference}: max abs error "
            f"{agreement.max_abs_error:.3g} (allowed {atol:.3g}), cosine {agreement.cosine:.6f} (need >= {min_cosine}).",
            "This is a bug in the exporter or compiler for this model; retry with --exporter torchscript or report it.",
        )
