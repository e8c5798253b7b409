import itertools

import pytest

from repfx_deploy.measure.timing import TimingConfig, time_callable, time_interleaved


def test_time_callable_counts_warmup_and_repeats():
    calls = itertools.count()
    stats = time_callable(lambda: next(calls), TimingConfig(warmup=3, repeats=10, min_time_s=0.0, remeasure=0))
    assert stats.repeats == 10 and stats.warmup == 3
    assert next(calls) == 13
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms


def test_time_callable_stretches_repeats_when_model_is_fast():
    stats = time_callable(lambda: None, TimingConfig(warmup=0, repeats=5, min_time_s=0.02, max_repeats=100000, remeasure=0))
    assert stats.repeats > 5


def test_time_callable_remeasures_when_spread_is_wide():
    # every fifth call is 50x slower: p90 / median is far above the allowed spread
    counter = itertools.count()

    def jittery():
        n = next(counter)
        total = 0
        for _ in range(20000 if n % 5 == 0 else 400):
            total += 1
        return total

    stats = time_callable(jittery, TimingConfig(warmup=0, repeats=10, min_time_s=0.0, max_spread=0.01, remeasure=2))
    assert stats.remeasured >= 1


@pytest.mark.parametrize("kwargs", [{"repeats": 2}, {"warmup": -1}, {"max_spread": 0}, {"repeats": 10, "max_repeats": 5}])
def test_timing_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        TimingConfig(**kwargs)


def test_time_interleaved_alternates_callables_and_pools_samples():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    stats = time_interleaved(fns, TimingConfig(warmup=1, repeats=12, min_time_s=0.0), rounds=3)
    assert stats["a"].repeats == 12 and stats["b"].repeats == 12
    timed = order[2:]  # after one warm-up call each
    assert timed[:4] == ["a"] * 4 and timed[4:8] == ["b"] * 4 and timed[8:12] == ["a"] * 4
