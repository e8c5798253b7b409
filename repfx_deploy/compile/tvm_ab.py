"""A/B of one kernel: its default schedule (``tvm_schedule``) against the tuning database's best record.

MetaSchedule's own numbers come from one noisy run per candidate, so after a kernel is tuned ``tvm_tune``
times both here, interleaved over ``AB_ROUNDS`` rounds, and keeps the record only when it wins by
``AB_MARGIN``. ``ab_compare`` times them on this CPU; ``tvm_tune_rpc.ab_compare_on_device`` uses the same
pieces (``ab_schedules``, ``ab_args``, ``ab_choose``) to time them on a device.
"""

from __future__ import annotations

import statistics

AB_ROUNDS = 7
AB_MARGIN = 0.03  # a record must beat the default by 3 % to replace it: noise must not flip choices


def ab_choose(timers, args) -> tuple[str, float, float]:
    """Time the default and the tuned kernel (``timers``: two time_evaluators) in interleaved rounds; the tuned
    one is chosen only when its median beats the default's by ``AB_MARGIN``. Returns (choice, default_us, tuned_us)."""
    samples: list[list[float]] = [[], []]
    for _ in range(AB_ROUNDS):
        for i, timer in enumerate(timers):
            samples[i].append(float(timer(*args).mean))
    d_s, t_s = statistics.median(samples[0]), statistics.median(samples[1])
    return ("tuned" if t_s < d_s * (1 - AB_MARGIN) else "default"), d_s * 1e6, t_s * 1e6


def ab_schedules(task_mod, target, db):
    """``(default, tuned)`` schedules of one kernel: the built-in one and the database's best record (either None)."""
    from repfx_deploy.compile.tvm_schedule import schedule_func

    default = schedule_func(task_mod["main"], target)
    tuned = db.query_schedule(task_mod, target, "main") if db.has_workload(task_mod) else None
    return default, tuned


def ab_args(task_mod, dev=None) -> list:
    """Seeded random arguments for one kernel, on ``dev`` (default: this CPU)."""
    import numpy as np
    import tvm
    from tvm.s_tir import meta_schedule as ms

    dev = tvm.cpu() if dev is None else dev
    rng = np.random.default_rng(0)
    return [
        tvm.runtime.tensor(np.asarray(rng.random([int(d) for d in a.shape])).astype(a.dtype), dev)
        for a in ms.arg_info.ArgInfo.from_prim_func(task_mod["main"])
    ]


def ab_compare(task_mod, target, db) -> tuple[str, float | None, float | None]:
    """Time the default schedule against the database's best record, interleaved; return (choice, us, us)."""
    import tvm

    default, tuned = ab_schedules(task_mod, target, db)
    if tuned is None or default is None:
        return ("default" if tuned is None else "tuned"), None, None
    args = ab_args(task_mod)
    timers = []
    for sch in (default, tuned):
        module = tvm.compile(sch.mod, target=target)
        module = module.jit() if hasattr(module, "jit") else module
        timers.append(module.time_evaluator("main", tvm.cpu(), number=1, repeat=1, min_repeat_ms=20))
    return ab_choose(timers, args)
