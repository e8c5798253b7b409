"""Checks that make bad data an error instead of a silently wrong figure.

NaN inputs once scored accuracy 1.0 (the arg-max of a NaN row is its first class), and labels past the model's
last class scored 0 without a word. Each check raises a ``DataError`` naming the file and the first bad sample
by its index in the file (``positions`` maps a kept sample back to it when a subset was taken).
"""

from __future__ import annotations

import numpy as np

from repfx_deploy.errors import DataError

_CHUNK = 1024  # samples per finiteness check: the boolean mask stays small for a large set


def check_samples(x: np.ndarray, y: np.ndarray | None, source: str) -> np.ndarray | None:
    """``x`` has at least one sample; ``y``, when given, is one integer class index per sample (returned as
    int64, ``N x 1`` flattened). Negative labels are refused here, labels past the model's classes later."""
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(
            f"{source!r} holds no samples (x has shape {tuple(x.shape)}).",
            "Store at least one sample, stacked along the first axis: x of shape N x <sample shape>.",
        )
    if y is None:
        return None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"The labels y in {source!r} have shape {tuple(y.shape)}; one class index per sample is needed.",
            "Store y as a 1-D array of class indices (for one-hot labels: y.argmax(1)).",
        )
    if len(y) != len(x):
        raise DataError(f"{source!r} has {len(x)} samples but {len(y)} labels.", "Store one label per sample.")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"The label of sample {i} in {source!r} is {float(y[i])}, not a whole class index.",
                "Store labels as integer class indices (0 for the first class).",
            )
    labels = np.asarray(y).astype(np.int64)
    if len(labels) and labels.min() < 0:
        i = int(np.flatnonzero(labels < 0)[0])
        raise DataError(
            f"The label of sample {i} in {source!r} is {int(labels[i])}; class indices start at 0.",
            "Store labels as class indices 0 .. classes-1.",
        )
    return labels


def check_finite(x: np.ndarray, source: str, positions: np.ndarray | None = None) -> None:
    """``DataError`` at the first NaN or infinite value of ``x`` (after preprocessing), naming its sample."""
    if x.dtype.kind != "f":  # integers cannot be NaN; complex data is refused when read
        return
    for start in range(0, len(x), _CHUNK):
        bad = ~np.isfinite(x[start : start + _CHUNK])
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            sample = start + where[0]
            index = int(positions[sample]) if positions is not None else sample
            element = ", ".join(map(str, where[1:]))
            raise DataError(
                f"Sample {index} of {source!r} holds {float(x[(sample, *where[1:])])} at [{element}]: inputs must be finite "
                "numbers (a NaN sample makes accuracy meaningless).",
                "Remove or repair the samples with NaN or infinite values (np.isfinite(x).all(axis=...) finds them).",
            )


def check_labels_fit(y: np.ndarray, classes: int, source: str, positions: np.ndarray | None = None) -> None:
    """``DataError`` at the first label that is not a class of a model with ``classes`` outputs."""
    bad = (y < 0) | (y >= classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        index = int(positions[i]) if positions is not None else i
        raise DataError(
            f"The label of sample {index} in {source!r} is {int(y[i])}, but the model has {classes} outputs "
            f"(classes 0 .. {classes - 1}).",
            "Use the evaluation set this model was trained for, or labels numbered from 0 in the model's class order.",
        )
