"""Time several runners on the same inputs, interleaved, and record where and how."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from repfx_deploy.measure.environment import environment
from repfx_deploy.measure.runner import Runner
from repfx_deploy.measure.timing import (
    LatencyStats,
    TimingConfig,
    time_callable,
    time_interleaved,
)

log = logging.getLogger("repfx_deploy.measure")

ROUNDS = 5


def _record(runner: Runner, stats: LatencyStats, interleaved: bool) -> dict:
    return {
        "runtime": runner.name,
        "measured": True,
        "latency_ms": round(stats.median_ms, 4),
        "stats": {**stats.to_dict(), "interleaved_rounds": ROUNDS if interleaved else 0},
        "environment": environment(runner.threads),
    }


def bench_runner(runner: Runner, inputs: Sequence[np.ndarray], timing: TimingConfig) -> dict:
    """Latency of one runner as a JSON-ready dict: statistics, threads, environment."""
    log.info("timing %s (%d threads)", runner.name, runner.threads)
    return _record(runner, time_callable(runner.bind(inputs), timing), interleaved=False)


def bench_runners(runners: Sequence[Runner], inputs: Sequence[np.ndarray], timing: TimingConfig) -> dict[str, dict]:
    """Latency of each runner, keyed by runtime name, timed in interleaved rounds so their ratios are fair."""
    if len(runners) == 1:
        return {runners[0].name: bench_runner(runners[0], inputs, timing)}
    log.info("timing %s in %d interleaved rounds", ", ".join(r.name for r in runners), ROUNDS)
    stats = time_interleaved({r.name: r.bind(inputs) for r in runners}, timing, rounds=ROUNDS)
    return {r.name: _record(r, stats[r.name], interleaved=True) for r in runners}
