"""Time several runners on the same inputs, interleaved, and record where and how."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

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


def _record(runner: Runner, stats: LatencyStats, rounds: int) -> dict:
    return {
        "runtime": runner.name,
        "measured": True,
        "latency_ms": round(stats.median_ms, 4),
        "stats": {**stats.to_dict(), "interleaved_rounds": rounds},
        "environment": environment(runner.threads),
    }


def bench_runner(runner: Runner, inputs: Sequence[np.ndarray], timing: TimingConfig) -> dict:
    """Latency of one runner as a JSON-ready dict: statistics, threads, environment."""
    log.info("timing %s (%d threads)", runner.name, runner.threads)
    return _record(runner, time_callable(runner.bind(inputs), timing), rounds=0)


def bench_runners(runners: Sequence[Runner], inputs: Sequence[np.ndarray], timing: TimingConfig) -> dict[str, dict]:
    """Latency of each runner, keyed by runtime name, timed in interleaved rounds so their ratios are fair."""
    return bench_jobs({r.name: (r, inputs) for r in runners}, timing)


def bench_jobs(
    jobs: Mapping[str, tuple[Runner, Sequence[np.ndarray]]], timing: TimingConfig, rounds: int = ROUNDS
) -> dict[str, dict]:
    """Latency of each ``(runner, inputs)`` under its key. One job is timed alone (re-measured when noisy, see
    ``time_callable``); several are timed in ``rounds`` interleaved rounds, so their ratios are fair even when
    they are different models."""
    if len(jobs) == 1:
        ((key, (runner, inputs)),) = jobs.items()
        return {key: bench_runner(runner, inputs, timing)}
    log.info("timing %s in %d interleaved rounds", ", ".join(jobs), rounds)
    stats = time_interleaved({key: r.bind(inputs) for key, (r, inputs) in jobs.items()}, timing, rounds=rounds)
    return {key: _record(r, stats[key], rounds) for key, (r, _) in jobs.items()}
