"""The latency a search ranks candidates by, in three tiers.

    predictor = TieredPredictor(profile, "tvm", specs)
    predictor.predict(run)          # tier 1: Prediction(latency_ms, source="lut-tvm", raw_ms, details)
    predictor.measure(run)          # tier 2: Measurement(latency_ms, source="measured-local", details)
    predictor.recalibrate()         # tier 3: scale and offset fitted to the (prediction, measurement) pairs
    predictor.error()               # {"mape_pct": ..., "kendall_tau": ..., "n": ...}

Tier 1, per target and runtime (``tier`` names it, and it is each prediction's ``source``):

- ``"lut-ort"``: ONNX Runtime on this machine: the per-layer lookup table of ``estimate/lut.py``
  (``estimate_latency(..., method="lookup table")``);
- ``"lut-tvm"``: TVM on this machine: the per-kernel table of ``tvm_layers.py`` (only unseen workloads are
  compiled and timed; the tuning database compile uses decides each kernel's schedule);
- ``"estimated"``: a device that is not this machine: the profile's calibrated estimator (``estimate_latency``
  with the profile's method); also a device reachable over RPC, whose kernels are not timed one by one;
- ``"measured-local"`` / ``"measured-rpc"``: where no table or estimator applies, the whole measurement.

Tier 2, ``measure``: the candidate exported, compiled (TVM) and timed whole by ``pipeline.evaluate`` -- here,
or on a device of the RPC tracker -- labelled by that source. Tier 3: ``recalibrate`` fits
``measured ~ scale * raw + offset`` by least squares on relative error (each pair weighted by 1/measured^2, so
a 1 ms and a 20 ms model count alike); later predictions are corrected by it; ``error`` reports MAPE and
Kendall tau of the corrected predictions against the measurements.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from repfx_deploy.errors import InputError
from repfx_deploy.measure.timing import TimingConfig

if TYPE_CHECKING:
    from repfx_deploy.measure.rpc.remote import RpcConfig
    from repfx_deploy.passes.registry import PassRun
    from repfx_deploy.search.tvm_layers import KernelTiming, TvmKernelTable
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import EstimatorMethod, TargetProfile

# An offset fitted on large models must not drive a small one's prediction to nothing: the corrected figure
# keeps at least this share of the scaled raw one.
MIN_CORRECTED_SHARE = 0.1
SEARCH_RUNTIMES = ("tvm", "onnxruntime")
DEFAULT_TIMING = TimingConfig()


@dataclass(frozen=True)
class Prediction:
    """A predicted latency (corrected by the current recalibration), where it came from, and the raw figure."""

    latency_ms: float
    source: str
    raw_ms: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "source": self.source, "raw_ms": self.raw_ms, **self.details}


@dataclass(frozen=True)
class Measurement:
    """A whole-model latency and its source (``measured-local``, ``measured-rpc``, or ``estimated`` when the
    target can be reached by no means). ``float(m)`` is ``m.latency_ms``."""

    latency_ms: float
    source: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.source != "estimated"

    def __float__(self) -> float:
        return float(self.latency_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "source": self.source, **self.details}


@dataclass(frozen=True)
class Correction:
    """``corrected = max(scale * raw + offset_ms, MIN_CORRECTED_SHARE * scale * raw)``, fitted on ``n`` pairs."""

    scale: float = 1.0
    offset_ms: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset_ms)):
            raise ValueError(f"a correction needs a finite scale > 0 and a finite offset, got {self!r}")

    def apply(self, raw_ms: float) -> float:
        scaled = self.scale * raw_ms
        return max(scaled + self.offset_ms, MIN_CORRECTED_SHARE * scaled)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset_ms": self.offset_ms, "n": self.n}


def fit_correction(pairs: Sequence[tuple[float, float]]) -> Correction:
    """The scale and offset minimizing the squared relative error of ``scale * predicted + offset`` against
    ``measured`` over ``pairs`` of ``(predicted_ms, measured_ms)``; pairs with a non-positive or non-finite
    figure are left out. Scale alone when there is one pair, every prediction is equal, or the fit's scale
    would not be positive; the identity with no usable pair."""
    points = [(float(p), float(m)) for p, m in pairs if _positive(p) and _positive(m)]
    if not points:
        return Correction()
    w = [1.0 / (m * m) for _, m in points]
    swpp = sum(wi * p * p for wi, (p, _) in zip(w, points))
    swp = sum(wi * p for wi, (p, _) in zip(w, points))
    sw = sum(w)
    swpm = sum(wi * p * m for wi, (p, m) in zip(w, points))
    swm = sum(wi * m for wi, (_, m) in zip(w, points))
    det = swpp * sw - swp * swp
    if len(points) >= 2 and det > 1e-12 * swpp * sw:
        scale = (swpm * sw - swp * swm) / det
        offset = (swpp * swm - swp * swpm) / det
        if scale > 0:
            return Correction(scale, offset, len(points))
    return Correction(swpm / swpp, 0.0, len(points))


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b between two equally long sequences (ties allowed); ``None`` below two pairs or when
    either is constant."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs sequences of equal length, got {len(a)} and {len(b)}")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = _sign(a[i] - a[j]), _sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else None


def prediction_error(pairs: Sequence[tuple[float, float]], correction: Correction) -> dict[str, Any]:
    """MAPE (%) of the corrected predictions against the measurements, before correction too, and Kendall tau.

    ``mape_loo_pct`` is the MAPE with each pair predicted by a correction fitted to the others (leave one out;
    from 3 pairs): the in-sample figure flatters a fit on few pairs."""
    points = [(float(p), float(m)) for p, m in pairs if _positive(p) and _positive(m)]
    if not points:
        return {"mape_pct": None, "mape_raw_pct": None, "mape_loo_pct": None, "kendall_tau": None, "n": 0}
    corrected = [correction.apply(p) for p, _ in points]
    measured = [m for _, m in points]
    loo = None
    if len(points) >= 3:
        held_out = [fit_correction(points[:i] + points[i + 1 :]).apply(p) for i, (p, _) in enumerate(points)]
        loo = _mape(held_out, measured)
    return {
        "mape_pct": _mape(corrected, measured),
        "mape_raw_pct": _mape([p for p, _ in points], measured),
        "mape_loo_pct": loo,
        "kendall_tau": kendall_tau(corrected, measured),
        "n": len(points),
    }


def _mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    return 100.0 * sum(abs(p - m) / m for p, m in zip(predicted, measured)) / len(measured)


class LatencyPredictor(Protocol):
    """What a search needs of a latency predictor (``TieredPredictor`` is the implementation)."""

    def predict(self, run: PassRun) -> Prediction: ...

    def measure(self, run: PassRun) -> Measurement: ...

    def recalibrate(self, pairs: Sequence[tuple[float, float]] | None = None) -> Correction: ...

    def error(self) -> dict[str, Any]: ...


def choose_runtime(profile: TargetProfile, asked: str | None = None) -> str:
    """The runtime a search times on ``profile``: ``asked``, else TVM when the profile has it, else ONNX Runtime."""
    if asked is not None:
        if asked not in SEARCH_RUNTIMES or asked not in profile.runtimes:
            have = [rt for rt in SEARCH_RUNTIMES if rt in profile.runtimes]
            raise InputError(
                f"A search cannot time {asked!r} on target {profile.name!r}.",
                f"Use --runtime {' or '.join(have) if have else 'with a target that has tvm or onnxruntime'}.",
            )
        return asked
    for runtime in SEARCH_RUNTIMES:
        if runtime in profile.runtimes:
            return runtime
    raise InputError(
        f"Target {profile.name!r} has neither tvm nor onnxruntime among its runtimes, so a search has nothing to time.",
        "Use a target whose runtimes include tvm or onnxruntime.",
    )


class TieredPredictor:
    """The three tiers of the module docstring for one target and runtime. ``measurements`` counts whole-model
    measurements taken; ``pairs`` holds ``(raw prediction, measurement)`` of every measured candidate."""

    def __init__(
        self,
        profile: TargetProfile,
        runtime: str,
        input_specs: tuple[InputSpec, ...],
        *,
        threads: int = 0,
        rpc: RpcConfig | None = None,
        timing: TimingConfig = DEFAULT_TIMING,
        cache_root: Path | None = None,
        kernel_timing: KernelTiming | None = None,
    ) -> None:
        from repfx_deploy.pipeline.latency import source_for
        from repfx_deploy.targets import resolve_threads

        if runtime not in ("tvm", "onnxruntime", "torch"):
            raise InputError(f"Unknown runtime {runtime!r}.", "Use tvm or onnxruntime.")
        self.profile = profile
        self.runtime = runtime
        self.input_specs = tuple(input_specs)
        self.threads = resolve_threads(profile, threads)
        self.rpc = rpc
        self.timing = timing
        self.cache_root = cache_root
        self.kernel_timing = kernel_timing
        # where a whole measurement comes from; a target with none is a TargetError here, before any work
        self.measure_source = source_for(profile, runtime, rpc=rpc is not None)
        self.tier = self._tier()
        self.correction = Correction()
        self.pairs: list[tuple[float, float]] = []
        self.measurements = 0
        self.time_s = {"predict": 0.0, "measure": 0.0, "compile": 0.0}
        self._fitted_on: list[tuple[float, float]] | None = None
        self._raw: dict[str, Prediction] = {}
        self._measured: dict[str, Measurement] = {}
        self._table: TvmKernelTable | None = None

    def _tier(self) -> str:
        estimator = self.profile.estimator
        if self.measure_source == "measured-local":
            if self.runtime == "tvm":
                return "lut-tvm"
            if self.runtime == "onnxruntime" and self.profile.is_host and estimator is not None:
                return "lut-ort"
        if estimator is not None and (self.measure_source != "measured-local" or self.runtime == "onnxruntime"):
            return "estimated"
        return self.measure_source

    def predict(self, run: PassRun) -> Prediction:
        """Tier 1 for ``run``'s module (cached by the configs that reproduce the run), corrected by the current
        recalibration (a whole measurement standing in for tier 1 is not corrected)."""
        key = run_key(run)
        raw = self._raw.get(key)
        if raw is None:
            started = time.perf_counter()
            raw = self._predict_raw(run)
            self.time_s["predict"] += time.perf_counter() - started
            self._raw[key] = raw
        if self.tier in ("measured-local", "measured-rpc"):
            return raw
        return Prediction(self.correction.apply(raw.raw_ms), raw.source, raw.raw_ms, dict(raw.details))

    def _predict_raw(self, run: PassRun) -> Prediction:
        from repfx_deploy.estimate.model import estimate_latency, prepare_onnx

        if self.tier in ("measured-local", "measured-rpc"):
            m = self.measure(run)
            return Prediction(m.latency_ms, m.source, m.latency_ms, {"whole_model": True})
        if self.tier == "lut-tvm":
            onnx_model, specs = prepare_onnx(run.module, self.input_specs)
            estimate = self.table().estimate(onnx_model, specs)
            return Prediction(estimate.latency_ms, self.tier, estimate.latency_ms, estimate.to_dict())
        method: EstimatorMethod | None = "lookup table" if self.tier == "lut-ort" else None
        est = estimate_latency(
            run.module, self.input_specs, self.profile, method=method, threads=self.threads, cache_root=self.cache_root
        )
        details = {"method": est.method, "layers": len(est.layers), "layers_measured": est.layers_measured}
        return Prediction(est.latency_ms, self.tier, est.latency_ms, details)

    def table(self) -> TvmKernelTable:
        """The TVM kernel table of this target and thread count (opened on first use)."""
        if self._table is None:
            from repfx_deploy.search.tvm_layers import DEFAULT_KERNEL_TIMING, TvmKernelTable
            from repfx_deploy.targets import resolve_tvm_target

            target = resolve_tvm_target(self.profile, self.threads)
            timing = self.kernel_timing or DEFAULT_KERNEL_TIMING
            self._table = TvmKernelTable.open(target, self.threads, self.cache_root, timing=timing)
        return self._table

    def measure(self, run: PassRun) -> Measurement:
        """Tier 2: ``run``'s module exported, compiled for the runtime and timed whole by ``evaluate`` (here or
        over RPC); cached by the configs that reproduce the run. A measured candidate's pair (raw tier-1
        prediction, measurement) joins ``pairs``."""
        from repfx_deploy.pipeline.artifacts import Deployable
        from repfx_deploy.pipeline.evaluate import evaluate

        key = run_key(run)
        if key in self._measured:
            return self._measured[key]
        started = time.perf_counter()
        evaluation = evaluate(
            Deployable(run.module, input_specs=self.input_specs),
            self.profile,
            runtimes=[self.runtime],
            threads=self.threads,
            timing=self.timing,
            rpc=self.rpc,
            verify=False,
        )
        measure_s = time.perf_counter() - started
        latency = evaluation.latency[self.runtime]
        compile_s = float((evaluation.builds.get("compile") or {}).get("compile_s") or 0.0)
        self.measurements += 1
        self.time_s["measure"] += measure_s - compile_s
        self.time_s["compile"] += compile_s
        result = Measurement(
            latency.latency_ms,
            latency.source,
            {"runtime": self.runtime, "measure_s": round(measure_s, 3), "compile_s": round(compile_s, 3)},
        )
        self._measured[key] = result
        if result.measured and self.tier not in ("measured-local", "measured-rpc"):
            self.pairs.append((self.predict(run).raw_ms, result.latency_ms))
        return result

    def recalibrate(self, pairs: Sequence[tuple[float, float]] | None = None) -> Correction:
        """Fit the correction to ``pairs`` of ``(raw predicted_ms, measured_ms)`` (default: ``self.pairs``, those
        of the candidates measured so far) and apply it to every later prediction. The raw figure is a
        prediction's ``raw_ms`` (a Score's ``details["latency_raw_ms"]``), not an already corrected one."""
        used = list(self.pairs if pairs is None else pairs)
        self.correction = fit_correction(used)
        self._fitted_on = used
        return self.correction

    def error(self) -> dict[str, Any]:
        """MAPE (%) and Kendall tau of the corrected predictions against the whole measurements they were
        fitted on (those of ``recalibrate``, else ``pairs``), with ``n``, the raw MAPE and the correction."""
        pairs = self._fitted_on if self._fitted_on is not None else self.pairs
        return {**prediction_error(pairs, self.correction), "correction": self.correction.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "tier": self.tier,
            "measure_source": self.measure_source,
            "threads": self.threads,
            "measurements": self.measurements,
            "time_s": {k: round(v, 3) for k, v in self.time_s.items()},
            "table": str(self._table.path) if self._table is not None else None,
            "error": self.error(),
        }


def run_key(run: PassRun) -> str:
    """A key for the model ``run`` made: a digest of the configs that reproduce it and of the module's tensor
    shapes (its architecture, whatever its weights: latency does not depend on them)."""
    module = run.module
    shapes = [(n, tuple(t.shape), str(t.dtype)) for n, t in (*module.named_parameters(), *module.named_buffers())]
    text = f"{run.configs!r}|{type(module).__qualname__}|{shapes!r}"
    return hashlib.sha256(text.encode()).hexdigest()


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)
