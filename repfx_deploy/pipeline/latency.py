"""Latency of a model on a target by whatever means is available, each figure labelled by where it came from.

- ``measured-local``: timed on this machine (the target is this machine, or runs its artifacts natively);
- ``measured-rpc``: timed on a device of the target from a TVM RPC tracker, with the device's own timer;
- ``estimated``: the target's calibrated estimator (``repfx_deploy.estimate``), never a measurement; it carries
  the profile's held-out error (``error_pct``, from ``[estimator] accuracy_pct``) and its statement of it.

``source_for`` decides which one a runtime gets; the rest of the module turns each kind of result into a
``Latency``. A runtime that none of them can reach is a ``TargetError`` before any work is done.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from repfx_deploy.errors import InputError, MeasureError, TargetError

if TYPE_CHECKING:
    import numpy as np
    import torch.nn as nn

    from repfx_deploy.measure.rpc.remote import DeviceResult, RpcConfig
    from repfx_deploy.measure.timing import TimingConfig
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import TargetProfile

LatencySource = Literal["measured-local", "measured-rpc", "estimated"]
SOURCES: tuple[str, ...] = ("measured-local", "measured-rpc", "estimated")
# How each source reads in a sentence or a table row.
SOURCE_WORDS = {
    "measured-local": "measured on this machine",
    "measured-rpc": "measured on device over RPC",
    "estimated": "estimated",
}
# What the device runs over RPC: only the compiled TVM artifact.
RPC_RUNTIMES = ("tvm",)


@dataclass(frozen=True)
class Latency:
    """One latency figure (batch latency, ms; the median for a measurement) and where it came from.

    ``details`` is the measurement record (statistics, threads, environment or device) or the estimate (method,
    what runtime it predicts, calibration); ``error_pct`` and ``accuracy`` are set for estimates only.
    """

    runtime: str
    source: LatencySource
    latency_ms: float
    details: Mapping[str, Any] = field(default_factory=dict)
    error_pct: float | None = None
    accuracy: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"latency source must be one of {SOURCES}, got {self.source!r}")
        if not (isinstance(self.latency_ms, (int, float)) and math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"latency_ms must be a finite number >= 0, got {self.latency_ms!r}")
        if (self.source == "estimated") != (self.error_pct is not None):
            raise ValueError("an estimate carries its error_pct, and only an estimate does")

    @property
    def label(self) -> str:
        """``"measured on this machine"``, ``"measured on device over RPC"`` or ``"estimated, ±14 %"``."""
        if self.source == "estimated":
            return f"estimated, ±{self.error_pct:.3g} %"
        return SOURCE_WORDS[self.source]

    def to_dict(self) -> dict[str, Any]:
        d = {**self.details, "runtime": self.runtime, "source": self.source, "latency_ms": self.latency_ms}
        if self.source == "estimated":
            d["error_pct"] = self.error_pct
            d["accuracy"] = self.accuracy
        return d


def source_for(profile: TargetProfile, runtime: str, *, rpc: bool) -> LatencySource:
    """Where ``runtime``'s latency on ``profile`` comes from: the device over RPC when a tracker is given (the
    TVM artifact only), this machine when the target is this machine, else the profile's estimator.
    ``TargetError`` when there is none of these (a profile from a file without ``[estimator]``)."""
    from repfx_deploy.compile.link import is_foreign_target, runs_here

    if rpc and runtime in RPC_RUNTIMES:
        return "measured-rpc"
    here = (
        runs_here(profile.target_dict, profile.link) if runtime == "tvm" else not is_foreign_target(profile.target_dict)
    )
    if here:
        return "measured-local"
    if profile.estimator is not None:
        return "estimated"
    raise TargetError(
        f"Target {profile.name!r} is another device, no RPC tracker was given, and its profile has no [estimator] "
        f"table: there is no way to know its {runtime} latency.",
        f"Measure on the device (--rpc HOST:PORT with a device of key {profile.rpc_key or profile.name!r}; see "
        "`repfx-deploy device --help`), or add an [estimator] table to the profile (see targets/rpi4.toml).",
    )


def check_rpc_target(profile: TargetProfile, runtimes: Sequence[str], *, compiles: bool = True) -> None:
    """Refuse, before any work, what cannot be measured over RPC: host runtimes, and (when the artifact is to be
    compiled here, ``compiles``) a target packaged as object files: a device server loads only a shared library."""
    other = sorted(set(runtimes) - set(RPC_RUNTIMES))
    if other:
        raise InputError(
            f"Over RPC only the TVM runtime runs on the device; cannot time {other} there.",
            "Drop --runtime (or use --runtime tvm), or bench those runtimes on this machine without --rpc.",
        )
    if compiles and profile.link != "shared":
        raise InputError(
            f"Target {profile.name!r} is packaged as object files ({profile.link}), which a device server cannot load.",
            "Link the artifact with the command compile writes into manifest.json, then bench that folder with --rpc.",
        )


def measured_local(runtime: str, record: Mapping[str, Any]) -> Latency:
    """A ``measure.bench`` record as a ``Latency``."""
    return Latency(runtime, "measured-local", float(record["latency_ms"]), details=dict(record))


def measure_rpc(
    artifacts: Mapping[str, Path],
    samples: Sequence[Sequence[np.ndarray]],
    timing_inputs: Sequence[np.ndarray],
    config: RpcConfig,
    timing: TimingConfig,
) -> dict[str, DeviceResult]:
    """Each compiled artifact folder timed on one device of ``config.key`` (its outputs for ``samples`` fetched
    back); ``MeasureError`` naming the device's reason when one could not be measured."""
    from repfx_deploy.measure.rpc.remote import DeviceJob, measure_on_device

    run = measure_on_device(
        [DeviceJob(name, path) for name, path in artifacts.items()], samples, timing_inputs, config, timing
    )
    if run.failures:
        name, why = next(iter(run.failures.items()))
        raise MeasureError(
            f"Measuring {name} on {config.key!r} via {config.endpoint} failed: {why}",
            "Check the device server's log; restart it, then rerun.",
        )
    return run.results


def measured_rpc(runtime: str, result: DeviceResult) -> Latency:
    """A device measurement as a ``Latency`` (its record says which device, and whether it was emulated)."""
    record = result.to_dict()
    return Latency(runtime, "measured-rpc", float(record["latency_ms"]), details=record)


def estimated(
    runtime: str,
    model: nn.Module | Path,
    specs: tuple[InputSpec, ...],
    profile: TargetProfile,
    threads: int = 0,
) -> Latency:
    """The profile's estimate for ``model`` (an ``nn.Module`` or an ONNX file), with the profile's held-out error."""
    from repfx_deploy.estimate import estimate_latency

    estimate = estimate_latency(model, specs, profile, threads=threads)
    details = {
        k: v for k, v in estimate.to_dict().items() if k not in ("layers", "runtime", "accuracy", "accuracy_pct")
    }
    details["predicts"] = estimate.runtime  # what the estimator was fitted to (pixel1: TF-Lite on one core)
    details["layers_estimated"] = len(estimate.layers)
    return Latency(
        runtime,
        "estimated",
        round(estimate.latency_ms, 6),
        details=details,
        error_pct=float(estimate.accuracy_pct),
        accuracy=estimate.accuracy,
    )
