"""Scoring a candidate: chain applied, BatchNorm re-estimated on a copy, top-1 on the held-out split, latency from
the predictor, size at the weights' bit widths, cached by assignment."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from protocol_checks import assert_unchanged, make_context, snapshot

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import PassError
from repfx_deploy.passes.chain import prepare_chain
from repfx_deploy.passes.registry import PassRun, parse_pass
from repfx_deploy.pipeline.data import RecipeData
from repfx_deploy.search.predictor import Prediction, TieredPredictor
from repfx_deploy.search.proxy import ProxyData
from repfx_deploy.search.scorer import CandidateScorer, weight_bytes
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import get_profile

SPECS = (InputSpec("input", (1, 3, 16, 16)),)
HOST = get_profile("host")  # channel_multiple 16: the wide net's sites keep 16, 32, 48 or 64 channels


class WideNet(nn.Module):
    """Two 64-channel conv-BN-ReLU layers: wide enough that keeping a quarter of the channels is clearly faster."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.c2, self.b2 = nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _images(n: int, seed: int, labeled: bool = True) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    return Dataset(x=x, y=rng.integers(0, 10, n) if labeled else None, source=f"images-{seed}")


CALIBRATION = _images(64, 1, labeled=False)
PROXY = ProxyData.from_recipe_data(RecipeData(CALIBRATION, None, _images(200, 2)), 64, 128)


@dataclass
class CountingPredictor:
    """Tier 1 as a function of the candidate's parameters; counts its calls."""

    calls: list = field(default_factory=list)

    def predict(self, run):
        self.calls.append(run)
        ms = sum(p.numel() for p in run.module.parameters()) / 1e4
        return Prediction(ms, "lut-fake", ms, {"fake": True})


def _chain(*tables):
    torch.manual_seed(0)
    context = make_context(SPECS, calibration=CALIBRATION, profile=HOST)
    return prepare_chain(WideNet().eval(), [parse_pass(t, i) for i, t in enumerate(tables)], context)


PRUNE = {"kind": "prune", "ratio": 0.0}
SMALL = {"prune/c1": 16, "prune/c2": 16}


def test_a_pruned_candidate_has_fewer_macs_and_no_larger_latency_on_the_ort_table(tmp_path):
    predictor = TieredPredictor(HOST, "onnxruntime", SPECS, threads=1, cache_root=tmp_path)
    scorer = CandidateScorer(_chain(PRUNE), PROXY, predictor, HOST, threads=1)
    dense, pruned = scorer.score({}), scorer.score(SMALL)
    assert dense.latency_source == pruned.latency_source == "lut-ort"
    assert pruned.details["macs"] < dense.details["macs"] / 4
    assert pruned.latency_ms <= dense.latency_ms and pruned.size_bytes < dense.size_bytes
    assert 0.0 <= pruned.accuracy <= 1.0 and pruned.details["holdout_samples"] == 128
    assert pruned.details["latency"]["layers"] > 0 and pruned.details["predict_s"] >= 0


def test_a_repeated_assignment_is_scored_once_even_when_spelled_with_its_defaults():
    predictor = CountingPredictor()
    chain = _chain(PRUNE)
    scorer = CandidateScorer(chain, PROXY, predictor, HOST, threads=1)
    first = scorer.score({})
    assert scorer.score(chain.space.defaults()) is first and scorer.score({}) is first
    assert scorer.scored == 1 and len(predictor.calls) == 1
    assert scorer.score(SMALL) is not first and scorer.scored == 2


def test_batchnorm_is_re_estimated_on_a_copy_and_the_chains_model_is_untouched():
    chain = _chain(PRUNE)
    before = snapshot(chain.module)
    scorer = CandidateScorer(chain, PROXY, CountingPredictor(), HOST, threads=1)
    score = scorer.score(SMALL)
    assert score.details["bn_recalibrated"] == 2
    assert_unchanged(chain.module, before)
    plain, scored = chain.apply(SMALL).module, scorer.build(SMALL).module
    assert not torch.equal(plain.b1.running_mean, scored.b1.running_mean)  # the BN split, not the pass's data


def test_accuracy_is_top1_on_the_held_out_split():
    scorer = CandidateScorer(_chain(PRUNE), PROXY, CountingPredictor(), HOST, threads=1)
    score = scorer.score(SMALL)
    module = scorer.build(SMALL).module.eval()
    with torch.no_grad():
        predicted = module(torch.from_numpy(PROXY.holdout.x)).argmax(1).numpy()
    assert score.accuracy == pytest.approx(float((predicted == PROXY.holdout.y).mean()))


def test_a_quantized_candidate_is_scored_as_int8_and_sized_at_its_bits():
    chain = _chain({"kind": "quantize"})
    scorer = CandidateScorer(chain, PROXY, CountingPredictor(), HOST, threads=1)
    as_float = {key: "float" for key in chain.space.keys()}
    int8, int4, fp = scorer.score({}), scorer.score({"quantize/c2": 4}), scorer.score(as_float)
    assert int8.details["bn_recalibrated"] == 0  # the quantize pass folded them
    weights = sum(p.numel() for p in WideNet().parameters() if p.dim() > 1)
    assert fp.size_bytes > 4 * weights > int8.size_bytes > int4.size_bytes
    assert int8.size_bytes < fp.size_bytes / 3
    x = torch.from_numpy(PROXY.holdout.x[:8])
    with torch.no_grad():
        quantized, floating = scorer.build({}).module(x), scorer.build(as_float).module(x)
    assert not torch.allclose(quantized, floating, atol=1e-6)  # fake-quant computes the int8 model's rounding


def test_weight_bytes_of_a_float_model_counts_parameters_and_statistics_but_not_step_counters():
    model = WideNet()
    params = sum(p.numel() for p in model.parameters())
    stats = sum(m.running_mean.numel() + m.running_var.numel() for m in (model.b1, model.b2))
    assert weight_bytes(model) == 4 * (params + stats)


class StaticBatch(nn.Module):
    """Runs at batch 1 only, as a graph captured at a static batch does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x):
        if x.shape[0] != 1:
            raise RuntimeError("static batch")
        return self.fc(x.flatten(1))


class Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("this candidate cannot run")


@dataclass
class FixedChain:
    """A chain whose every assignment gives ``module`` (what the scorer reads of a PreparedChain)."""

    module: nn.Module
    prefixes: tuple = ()
    context: object = field(default_factory=lambda: make_context(SPECS, profile=HOST))

    def apply(self, assignment):
        return PassRun(self.module, [], (), SPECS)


def test_a_static_batch_candidate_is_evaluated_at_its_own_batch():
    scorer = CandidateScorer(FixedChain(StaticBatch().eval()), PROXY, CountingPredictor(), HOST, threads=1)
    score = scorer.score({})
    assert 0.0 <= score.accuracy <= 1.0 and score.details["holdout_samples"] == 128


def test_a_candidate_that_does_not_run_is_a_pass_error():
    scorer = CandidateScorer(FixedChain(Broken()), PROXY, CountingPredictor(), HOST, threads=1)
    with pytest.raises(PassError, match="cannot run"):
        scorer.score({})


def test_measure_times_the_scored_candidate_whole_and_keeps_its_pair(tmp_path):
    from repfx_deploy.measure.timing import TimingConfig

    fast = TimingConfig(warmup=1, repeats=3, min_time_s=0.0, max_repeats=3, remeasure=0)
    predictor = TieredPredictor(HOST, "onnxruntime", SPECS, threads=1, timing=fast, cache_root=tmp_path)
    scorer = CandidateScorer(_chain(PRUNE), PROXY, predictor, HOST, threads=1)
    score = scorer.score(SMALL)
    measured = scorer.measure(SMALL)
    assert measured.source == "measured-local" and measured.latency_ms > 0 and predictor.measurements == 1
    assert predictor.pairs == [(score.details["latency_raw_ms"], measured.latency_ms)]
