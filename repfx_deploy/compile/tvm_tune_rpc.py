"""MetaSchedule over TVM RPC: candidates built and cross-linked here, timed on a device from a tracker.

Used by ``tvm_tune.tune_kernels`` when ``CompileConfig.tune_rpc`` is set: ``export_for_device`` links each
candidate as the device's ``.so`` (``compile.link``: cross g++ for ARM boards), ``rpc_runner`` is MetaSchedule's
``RPCRunner`` for the tracker and key, and ``ab_compare_on_device`` times the default schedule against the best
record on the device, interleaved, as the local A/B does on this machine.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from repfx_deploy.compile.tvm_ab import ab_args, ab_choose, ab_schedules
from repfx_deploy.compile.tvm_runtime import AFFINITY_BIG


def export_for_device(target_json: str, mod) -> str:
    """MetaSchedule ``f_export`` for RPC: link the candidate as the device's ``.so`` (cross g++ for ARM boards).

    Runs in the builder's worker processes; returns the library's path.
    """
    from repfx_deploy.compile.link import export_artifact

    path, _ = export_artifact(mod, Path(tempfile.mkdtemp(prefix="repfx-ms-")), json.loads(target_json), "shared")
    return str(path)


def rpc_runner(rpc):
    """MetaSchedule's runner for a device from a tracker: one candidate at a time (it is one board)."""
    from tvm.s_tir import meta_schedule as ms

    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.tracker import metaschedule_session

    endpoint = RpcEndpoint.parse(rpc.tracker)
    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(
            tracker_host=endpoint.host,
            tracker_port=endpoint.port,
            tracker_key=rpc.key,
            session_timeout_sec=int(rpc.session_timeout_s),
        ),
        evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=3, min_repeat_ms=40),
        # our session: it sends the token (REPFX_RPC_TOKEN_FILE / REPFX_RPC_TOKEN), which TVM's own cannot
        f_create_session=metaschedule_session,
        max_workers=1,
    )


def ab_compare_on_device(task_mod, target, db, rpc, target_dict: dict) -> tuple[str, float | None, float | None]:
    """``tvm_ab.ab_compare`` with both schedules cross-linked here and timed on the device, interleaved."""
    import tvm

    from repfx_deploy.compile.link import export_artifact
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.tracker import request_session

    default, tuned = ab_schedules(task_mod, target, db)
    if tuned is None or default is None:
        return ("default" if tuned is None else "tuned"), None, None
    with tempfile.TemporaryDirectory(prefix="repfx-ab-") as tmp:
        libraries = []
        for i, sch in enumerate((default, tuned)):
            (Path(tmp) / str(i)).mkdir()
            libraries.append(
                export_artifact(tvm.compile(sch.mod, target=target), Path(tmp) / str(i), target_dict, "shared")[0]
            )
        device = request_session(
            RpcEndpoint.parse(rpc.tracker), rpc.key, wait_s=60, session_timeout_s=rpc.session_timeout_s
        )
        # DeviceSession types the session as object (measure/ holds no TVM types); it is TVM's RPCSession
        remote: Any = device.session
        dev = remote.cpu()
        remote.get_function("runtime.config_threadpool")(AFFINITY_BIG, int(target_dict.get("num-cores", 1)))
        timers = []
        for i, library in enumerate(libraries):
            remote.upload(str(library), f"repfx-ab-{i}.so")
            timers.append(
                remote.load_module(f"repfx-ab-{i}.so").time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=20)
            )
        return ab_choose(timers, ab_args(task_mod, dev))
