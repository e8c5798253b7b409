"""Time several runners on the same inputs, one after another, and record where and how."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from repfx_deploy.measure.environment import environment
from repfx_deploy.measure.runner import Runner
from repfx_deploy.measure.timing import TimingConfig, time_callable

log = logging.getLogger("repfx_deploy.measure")


def bench_runner(runner: Runner, inputs: Sequence[np.ndarray], timing: TimingConfig) -> dict:
    """Latency of one runner as a JSON-ready dict: statistics, threads, environment."""
    log.info("timing %s (%d threads)", runner.name, runner.threads)
    stats = time_callable(runner.bind(inputs), timing)
    return {
        "runtime": runner.name,
        "measured": True,
        "latency_ms": round(stats.median_ms, 4),
        "stats": stats.to_dict(),
        "environment": environment(runner.threads),
    }


def bench_runners(runners: Sequence[Runner], inputs: Sequence[np.ndarray], timing: TimingConfig) -> dict[str, dict]:
    """``bench_runner`` for each, keyed by runtime name, measured back to back in one process."""
    return {r.name: bench_runner(r, inputs, timing) for r in runners}
