"""Latency statistics with measurement hygiene: warm-up, repeats, median, p90, min, and a re-measure when noisy.

These machines are shared and noisy, so a single run is never reported: the median of many repeats is, with
the spread beside it.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TimingConfig:
    """How to time a callable.

    ``min_time_s`` stretches ``repeats`` for very fast models so the median is not dominated by timer noise;
    ``max_spread`` (p90 / median - 1) triggers one re-measure, as a busy neighbour usually passes.
    """

    warmup: int = 10
    repeats: int = 50
    min_time_s: float = 0.5
    max_repeats: int = 2000
    max_spread: float = 0.25
    remeasure: int = 1

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 3 or self.max_repeats < self.repeats:
            raise ValueError("TimingConfig needs warmup >= 0 and 3 <= repeats <= max_repeats")
        if self.min_time_s < 0 or self.max_spread <= 0 or self.remeasure < 0:
            raise ValueError("TimingConfig needs min_time_s >= 0, max_spread > 0, remeasure >= 0")


@dataclass(frozen=True)
class LatencyStats:
    """Batch latency in milliseconds over ``repeats`` timed calls; ``remeasured`` counts the extra
    measurements taken because the spread was too wide (the tightest one is reported)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    stdev_ms: float
    repeats: int
    warmup: int
    remeasured: int

    @property
    def spread(self) -> float:
        return self.p90_ms / self.median_ms - 1.0 if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = round(self.spread, 4)
        return d


def _percentile(sorted_ms: list[float], q: float) -> float:
    idx = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[idx]


def _summarize(samples_ms: list[float], warmup: int, remeasured: int) -> LatencyStats:
    s = sorted(samples_ms)
    return LatencyStats(
        median_ms=statistics.median(s),
        p90_ms=_percentile(s, 0.9),
        min_ms=s[0],
        mean_ms=statistics.fmean(s),
        stdev_ms=statistics.pstdev(s),
        repeats=len(s),
        warmup=warmup,
        remeasured=remeasured,
    )


def summarize(samples_ms: list[float], warmup: int, remeasured: int = 0) -> LatencyStats:
    """Statistics of samples timed elsewhere (a device's own timer over RPC), computed as for local timing."""
    return _summarize(samples_ms, warmup, remeasured)


def _collect(fn: Callable[[], object], config: TimingConfig) -> list[float]:
    """Timed calls in ms: at least ``repeats``, more until ``min_time_s`` passes (capped by ``max_repeats``)."""
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < config.repeats or (
        time.perf_counter() - started < config.min_time_s and len(samples) < config.max_repeats
    ):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_callable(fn: Callable[[], object], config: TimingConfig = TimingConfig()) -> LatencyStats:
    """Time ``fn()`` (which must block until its result is ready) and return robust statistics.

    The repeat count grows until ``min_time_s`` of timed calls are collected (capped by ``max_repeats``).
    When the spread exceeds ``max_spread`` the whole measurement is redone up to ``remeasure`` times and
    the tighter one is kept.
    """

    def once() -> LatencyStats:
        for _ in range(config.warmup):
            fn()
        return _summarize(_collect(fn, config), config.warmup, remeasured=0)

    return best_of(once, config)


def best_of(measure_once: Callable[[], LatencyStats], config: TimingConfig) -> LatencyStats:
    """Call ``measure_once`` until a measurement's spread is within ``max_spread`` (at most ``remeasure`` extra
    times) and keep the tightest; ``remeasured`` says how many extra measurements were taken."""
    best: LatencyStats | None = None
    taken = 0
    for _ in range(config.remeasure + 1):
        stats = measure_once()
        taken += 1
        if best is None or stats.spread < best.spread:
            best = stats
        if stats.spread <= config.max_spread:
            break
    assert best is not None  # remeasure >= 0, so the loop ran at least once
    return dataclasses.replace(best, remeasured=taken - 1)


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], config: TimingConfig = TimingConfig(), rounds: int = 5
) -> dict[str, LatencyStats]:
    """Time several callables in alternation, so a busy neighbour or a clock change hurts them all alike.

    Each callable is warmed up once; then ``rounds`` rounds each time every callable for a share of
    ``config.repeats`` (at least 3 calls, stretched to a share of ``min_time_s``). Samples are pooled per
    callable. Use this, not back-to-back ``time_callable`` calls, when the figures are compared as ratios.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    for fn in fns.values():
        for _ in range(config.warmup):
            fn()
    share = TimingConfig(
        warmup=0,
        repeats=max(3, config.repeats // rounds),
        min_time_s=config.min_time_s / rounds,
        max_repeats=max(3, config.max_repeats // rounds),
        remeasure=0,
    )
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += _collect(fn, share)
    return {name: _summarize(s, config.warmup, remeasured=0) for name, s in samples.items()}
