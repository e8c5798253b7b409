"""Scoring one candidate of a search without fine-tuning it: the accuracy proxy, the predicted latency, the size.

    scorer = CandidateScorer(chain, ProxyData.from_recipe_data(data), TieredPredictor(profile, "tvm", specs), profile)
    score = scorer.score({"prune/layer1.0.conv1": 8, "quantize/fc": 8})
    score.accuracy, score.latency_ms, score.latency_source, score.size_bytes, score.details["macs"]

A candidate is ``chain.apply(assignment)`` (prepare once, apply many). Its BatchNorm statistics are then
re-estimated on the proxy's BN split (on a copy: the chain's module is never touched), and its top-1 accuracy is
measured in torch on the held-out split of the training data. A quantized candidate is the quantize pass's
frozen module, whose fake quantizers compute in torch what the int8 QDQ model computes (weights on their int8
or int4 grid, activations rounded to uint8), so its proxy accuracy is the quantized model's; its BatchNorms are
already folded, so there is nothing to re-estimate. Latency is the predictor's tier 1; ``size_bytes`` counts
the weights at their bit widths. Scores are cached by assignment (given, and completed with the defaults).
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import DataError, PassError
from repfx_deploy.search.objective import Score

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.passes.chain import PreparedChain
    from repfx_deploy.passes.protocol import Choice
    from repfx_deploy.passes.registry import PassRun
    from repfx_deploy.search.predictor import LatencyPredictor, Measurement
    from repfx_deploy.search.proxy import ProxyData
    from repfx_deploy.targets import TargetProfile

log = logging.getLogger("repfx_deploy.search")

# Batches of the held-out evaluation and the BatchNorm re-estimation (a static-batch candidate runs at its own).
EVAL_BATCH = 64
BN_BATCH = 64
_FAKEQUANT = "repfx_deploy.passes.quantize.fakequant"


class CandidateScorer:
    """The search's ``Scorer`` (see the module docstring). ``scored`` counts candidates scored (cache misses);
    ``time_s`` sums the time of each step over them."""

    def __init__(
        self,
        chain: PreparedChain,
        proxy: ProxyData,
        predictor: LatencyPredictor,
        profile: TargetProfile,
        *,
        threads: int = 0,
        eval_batch: int = EVAL_BATCH,
        bn_batch: int = BN_BATCH,
    ) -> None:
        from repfx_deploy.targets import resolve_threads

        if eval_batch < 1 or bn_batch < 1:
            raise ValueError(f"eval_batch and bn_batch must be >= 1, got {eval_batch}, {bn_batch}")
        self.chain = chain
        self.proxy = proxy
        self.predictor = predictor
        self.profile = profile
        self.threads = resolve_threads(profile, threads)
        self.eval_batch = eval_batch
        self.bn_batch = bn_batch
        self.scored = 0
        self.time_s = {"apply": 0.0, "bn": 0.0, "eval": 0.0, "predict": 0.0}
        self._cache: dict[tuple, Score] = {}

    def score(self, assignment: Mapping[str, Choice]) -> Score:
        """The candidate's proxy accuracy, predicted latency, size and details; cached by assignment.
        A candidate the passes cannot build raises their ``RepfxError`` (the search records a failed trial)."""
        key = _key(assignment)
        if key in self._cache:
            return self._cache[key]
        started = time.perf_counter()
        run = self.chain.apply(assignment)
        applied = time.perf_counter()
        module, bn_layers = self._recalibrated(run.module)
        recalibrated = time.perf_counter()
        accuracy, batch = self._accuracy(module)
        evaluated = time.perf_counter()
        run = replace(run, module=module)
        prediction = self.predictor.predict(run)
        predicted = time.perf_counter()
        steps = {
            "apply": applied - started,
            "bn": recalibrated - applied,
            "eval": evaluated - recalibrated,
            "predict": predicted - evaluated,
        }
        for step, seconds in steps.items():
            self.time_s[step] += seconds
        self.scored += 1
        macs, params = _counts(run)
        score = Score(
            accuracy=accuracy,
            latency_ms=float(prediction.latency_ms),
            size_bytes=weight_bytes(module),
            latency_source=prediction.source,
            details={
                "macs": macs,
                "params": params,
                "latency_raw_ms": prediction.raw_ms,
                "latency": prediction.details,
                "bn_recalibrated": bn_layers,
                "holdout_samples": len(self.proxy.holdout) // batch * batch,
                "proxy_s": round(steps["apply"] + steps["bn"] + steps["eval"], 4),
                "predict_s": round(steps["predict"], 4),
                "apply_s": round(steps["apply"], 4),
                "bn_s": round(steps["bn"], 4),
                "eval_s": round(steps["eval"], 4),
            },
        )
        self._cache[key] = score
        self._cache.setdefault(_key(completed(run, self.chain.prefixes)), score)
        return score

    def build(self, assignment: Mapping[str, Choice]) -> PassRun:
        """The candidate as scored: ``chain.apply(assignment)`` with its BatchNorms re-estimated (on a copy)."""
        run = self.chain.apply(assignment)
        return replace(run, module=self._recalibrated(run.module)[0])

    def measure(self, assignment: Mapping[str, Choice]) -> Measurement:
        """The candidate measured whole by the predictor (tier 2), which also keeps the pair for recalibration."""
        return self.predictor.measure(self.build(assignment))

    def to_dict(self) -> dict[str, Any]:
        return {
            "scored": self.scored,
            "cached": len(self._cache),
            "time_s": {k: round(v, 3) for k, v in self.time_s.items()},
            "proxy": self.proxy.to_dict(),
        }

    def _recalibrated(self, module: nn.Module) -> tuple[nn.Module, int]:
        """A copy of ``module`` with its BatchNorm statistics re-estimated on the BN split (``module`` itself
        when it has no BatchNorm), and how many BatchNorms that was."""
        import torch.nn as nn

        from repfx_deploy.passes.recovery.bn import recalibrate_bn

        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in module.modules()):
            return module, 0
        with warnings.catch_warnings():
            # torch's exported graphs warn about their deprecated LeafSpec on every copy
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            module = copy.deepcopy(module)
        bn = self.proxy.bn
        size = min(self.bn_batch, len(bn))
        layers = recalibrate_bn(module, bn, batches=math.ceil(len(bn) / size), batch_size=size, seed=self.proxy.seed)
        return module, layers

    def _accuracy(self, module: nn.Module) -> tuple[float, int]:
        """Top-1 accuracy on the held-out split, in batches of ``eval_batch``, or of the model's own batch when
        it takes no other (a graph captured at a static batch); and the batch used."""
        from repfx_deploy.measure.runtimes import TorchRunner
        from repfx_deploy.pipeline.quality import predictions, top1_accuracy

        holdout = self.proxy.holdout
        runner = TorchRunner(module, self.threads)
        static = int(self.chain.context.input_specs[0].shape[0])
        failure: Exception | None = None
        for batch in dict.fromkeys((min(self.eval_batch, len(holdout)), static)):
            if batch > len(holdout):
                raise DataError(
                    f"The held-out split has {len(holdout)} samples, fewer than the model's batch of {batch}.",
                    "Give more labelled training data, or raise holdout_samples.",
                )
            try:
                outputs = predictions(runner, holdout, batch)
            except Exception as e:  # a static-batch graph refuses other batches: try the model's own
                failure = e
                continue
            return top1_accuracy(outputs, holdout, batch), batch
        raise PassError(
            f"The candidate does not run on the held-out data: {type(failure).__name__}: {failure}",
            "Check that the model runs in torch on the recipe's data; report the model if it does.",
        ) from failure


def completed(run: PassRun, prefixes: tuple[str, ...]) -> dict[str, Choice]:
    """The assignment ``run`` applied, every site included (each pass's decisions, keyed ``<prefix>/<site>``)."""
    return {f"{p}/{site}": choice for p, r in zip(prefixes, run.results) for site, choice in r.decisions.items()}


def weight_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s stored tensors, each weight at its bit width: a frozen quantized weight counts as
    its packed integers plus a float32 scale per channel (int4: half a byte each, as the quantize pass's size
    budget counts it), every other parameter and buffer at its dtype's size (BatchNorm step counters left out)."""
    fakequant = sys.modules.get(_FAKEQUANT)  # not imported: the module holds no quantized weight
    counted: set[int] = set()
    total = 0.0
    if fakequant is not None:
        for m in module.modules():
            if isinstance(m, fakequant.WeightQuant) and m.state == "frozen":
                total += m.packed_bytes
                counted.update(id(t) for t in (m.weight, m.scale, m.weight_int, m.zero_point))
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if id(tensor) in counted or name.endswith("num_batches_tracked"):
            continue
        counted.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return int(round(total))


def _counts(run: PassRun) -> tuple[int, int]:
    """MACs and parameters of the candidate: the last pass's counts, else the module counted."""
    if run.results:
        last = run.results[-1]
        return int(last.macs_after), int(last.params_after)
    return int(run.stats.macs), int(run.stats.params)


def _key(assignment: Mapping[str, Choice]) -> tuple:
    return tuple(sorted((str(k), (type(v).__name__, v)) for k, v in assignment.items()))
