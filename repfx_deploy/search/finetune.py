"""The result's fine-tune: the top K measured, feasible front members fine-tuned with the recover pass.

    tuned = finetune_top(front, k=3, chain=chain, original=model, context=context, holdout=proxy.holdout,
                         steps=300, seed=0, threads=2)
    best = pick(tuned)       # the most accurate on the held-out split after fine-tuning

Each candidate is rebuilt from the configs that reproduce its assignment plus the fine-tune
(``recipe_out.finetune_configs``), by ``run_passes`` on the original model with the same context ``compress``
builds, so the model fine-tuned here is the one ``compress --recipe recipe.toml`` rebuilds. Its accuracy is
top-1 on the proxy's held-out split (the evaluation set stays for the final report); its latency is the
whole-model measurement of its assignment (a fine-tune changes weights, not the shapes the latency depends on).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import RepfxError
from repfx_deploy.search.front import MEASURED_LATENCY, MEASURED_SOURCE, accuracy_of, is_measured
from repfx_deploy.search.measure import assignment_of
from repfx_deploy.search.recipe_out import finetune_configs

if TYPE_CHECKING:
    import torch.nn as nn
    from optuna.trial import FrozenTrial

    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.passes.chain import PreparedChain
    from repfx_deploy.passes.protocol import PassConfig, PassContext

log = logging.getLogger("repfx_deploy.search")

EVAL_BATCH = 64


@dataclass
class Finetuned:
    """One fine-tuned candidate: the trial it came from, the configs that rebuild it, its held-out accuracy
    before (the proxy) and after the fine-tune, its measured latency, and the time the fine-tune took."""

    number: int
    configs: tuple[PassConfig, ...]
    proxy_accuracy: float
    latency_ms: float | None
    latency_source: str | None
    assignment: dict[str, Any]
    accuracy: float | None = None
    time_s: float = 0.0
    error: str | None = None
    module: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "assignment": self.assignment,
            "proxy_accuracy": self.proxy_accuracy,
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
            "latency_source": self.latency_source,
            "finetune_s": round(self.time_s, 3),
            "error": self.error,
        }


def top_candidates(front: Sequence[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The ``k`` most accurate measured members of ``front`` (a feasible front), most accurate first."""
    measured = [t for t in front if is_measured(t)]
    return sorted(measured, key=lambda t: (-accuracy_of(t), float(t.user_attrs[MEASURED_LATENCY]), t.number))[:k]


def holdout_accuracy(module: nn.Module, holdout: Dataset, *, batch: int, threads: int) -> float:
    """Top-1 accuracy of ``module`` in torch on ``holdout``, in batches of ``batch``."""
    from repfx_deploy.measure.runtimes import TorchRunner
    from repfx_deploy.pipeline.quality import predictions, top1_accuracy

    batch = max(1, min(batch, len(holdout)))
    return top1_accuracy(predictions(TorchRunner(module, threads), holdout, batch), holdout, batch)


def finetune_top(
    front: Sequence[FrozenTrial],
    k: int,
    *,
    chain: PreparedChain,
    original: nn.Module,
    context: PassContext,
    holdout: Dataset,
    steps: int,
    seed: int,
    threads: int,
) -> list[Finetuned]:
    """Fine-tune the ``k`` most accurate measured members of ``front`` (see the module docstring). A candidate
    whose fine-tune fails keeps its error and no accuracy; the others go on."""
    from repfx_deploy.passes.registry import run_passes

    static = int(context.input_specs[0].shape[0])
    out = []
    for trial in top_candidates(front, k):
        assignment = assignment_of(trial)
        item = Finetuned(
            number=trial.number,
            configs=(),
            proxy_accuracy=accuracy_of(trial),
            latency_ms=float(trial.user_attrs[MEASURED_LATENCY]),
            latency_source=trial.user_attrs.get(MEASURED_SOURCE),
            assignment=assignment,
        )
        started = time.perf_counter()
        try:
            item.configs = finetune_configs(chain.apply(assignment).configs, steps=steps, seed=seed)
            log.info("fine-tuning trial %d (%d step(s))", trial.number, steps)
            item.module = run_passes(original, item.configs, context).module
            item.accuracy = _accuracy(item.module, holdout, static, threads)
        except RepfxError as e:
            log.warning("trial %d could not be fine-tuned: %s", trial.number, e)
            item.error = f"{type(e).__name__}: {e.problem}"
        item.time_s = time.perf_counter() - started
        out.append(item)
    return out


def _accuracy(module: nn.Module, holdout: Dataset, static: int, threads: int) -> float:
    """Held-out accuracy at ``EVAL_BATCH``, or at the model's own batch when it takes no other."""
    try:
        return holdout_accuracy(module, holdout, batch=EVAL_BATCH, threads=threads)
    except Exception:  # a graph captured at a static batch refuses others: score it at its own
        return holdout_accuracy(module, holdout, batch=static, threads=threads)


def ranked(tuned: Sequence[Finetuned]) -> list[Finetuned]:
    """The fine-tuned candidates that succeeded, most accurate first (faster, then earlier, on a tie)."""
    ok = [t for t in tuned if t.accuracy is not None]
    return sorted(ok, key=lambda t: (-(t.accuracy or 0.0), t.latency_ms or 0.0, t.number))
