"""The one interface every runtime is measured and verified through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np


class Runner(Protocol):
    """A loaded model on one runtime.

    ``name`` is the runtime (``torch``, ``onnxruntime``, ``tvm``); ``threads`` is the intra-op thread count
    actually in force; ``run`` returns every output as a numpy array; ``bind`` returns a zero-argument callable
    that runs the model once on inputs prepared in advance (so timing excludes host-side conversion) and
    blocks until the outputs are ready.
    """

    name: str
    threads: int

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], object]: ...


def run_all(runner: Runner, samples: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of ``runner`` for each input list in ``samples``."""
    return [runner.run(s) for s in samples]
