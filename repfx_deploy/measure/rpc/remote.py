"""Upload compiled artifacts to a device over TVM RPC, fetch their outputs, and time them with the device's timer.

Per artifact: upload ``model.so``, load it into a Relax VM on the device, set the device's thread pool, run
the verification inputs and bring the outputs back, then time ``main`` with TVM's ``time_evaluator`` on the
device (network time excluded): ``warmup`` discarded calls, per-call samples stretched to ``min_time_s``,
re-measured when the spread is wider than ``max_spread`` (the tighter measurement is kept), as in
``measure.timing``.

Failures: each artifact attempt runs under a deadline (a device that vanishes without closing its socket
must not hang the run). After a failure the session is probed; a dead session (device dropped, server killed)
is replaced by a new one from the tracker, which hands out another free server of the key, and the artifact
retried, up to ``retries`` times; so is a handed-out server that cannot be reached. An artifact that fails on
a live device (it cannot load there, or is over the server's upload limit) is not retried. Results already
measured are kept: ``measure_on_device`` returns them with the failures beside them, ``on_result`` sees each
result as it completes, and each result lists the servers it was tried on (``servers``: the ones that
dropped, then the one that measured it).

The token (``auth``) comes from the environment (``REPFX_RPC_TOKEN_FILE`` / ``REPFX_RPC_TOKEN``) or
``RpcConfig.token_file``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repfx_deploy.errors import (
    DeviceUnreachableError,
    InputShapeError,
    MeasureError,
    ModelLoadError,
    RepfxError,
)
from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
from repfx_deploy.measure.rpc.files import UPLOAD_REFUSED
from repfx_deploy.measure.rpc.server import DEVICE_INFO_FUNC, EMULATED_NOTE, check_key
from repfx_deploy.measure.rpc.tracker import DeviceSession, request_session
from repfx_deploy.measure.timing import LatencyStats, TimingConfig, best_of, summarize
from repfx_deploy.spec import InputSpec

log = logging.getLogger("repfx_deploy.measure")

RUNTIME = "tvm-rpc"
_PROBE_TIMEOUT_S = 10.0
_DEFAULT_TIMING = TimingConfig()  # frozen: one shared default is safe


@dataclass(frozen=True)
class RpcConfig:
    """Where and how to measure: the tracker, the device key, threads, and the bounds on every wait.

    ``threads`` 0: every thread the device's TVM pool allows. ``wait_s``: how long to wait for a free
    device. ``session_timeout_s``: the server ends a session after this, whatever the client does.
    ``attempt_timeout_s``: the client gives up on one artifact attempt after this. ``retries``: extra
    attempts, each on a new session, after the device dropped. ``token_file``: the shared token (default:
    ``REPFX_RPC_TOKEN_FILE``, else ``REPFX_RPC_TOKEN``, else none).
    """

    endpoint: RpcEndpoint
    key: str
    threads: int = 0
    wait_s: float = 60.0
    session_timeout_s: float = 900.0
    attempt_timeout_s: float = 600.0
    retries: int = 1
    token_file: Path | None = None

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.threads < 0 or self.retries < 0:
            raise ValueError("RpcConfig needs threads >= 0 and retries >= 0")
        if min(self.wait_s, self.session_timeout_s, self.attempt_timeout_s) <= 0:
            raise ValueError("RpcConfig timeouts must be positive")


@dataclass(frozen=True)
class DeviceJob:
    """One compiled artifact folder (``manifest.json`` + ``model.so``) to measure under ``name``."""

    name: str
    artifact_dir: Path


@dataclass
class DeviceResult:
    """A measurement on the device: statistics, fetched outputs (one list per verification sample), where."""

    name: str
    stats: LatencyStats
    outputs: list[list[np.ndarray]]
    threads: int
    device: dict
    attempts: int
    dropped: list[dict] = field(default_factory=list)  # {"address", "error"} of each attempt that failed first

    @property
    def emulated(self) -> bool:
        return bool(self.device.get("emulated"))

    def to_dict(self) -> dict:
        """The JSON record, shaped like ``measure.bench``'s, with the device's runtime, versions and threads."""
        info = self.device
        record = {
            "runtime": RUNTIME,
            "measured": True,
            "emulated": self.emulated,
            "latency_ms": round(self.stats.median_ms, 4),
            "stats": {**self.stats.to_dict(), "interleaved_rounds": 0, "timer": "device time_evaluator"},
            "device": info,
            "environment": {
                "cpu": info.get("cpu", "unknown"),
                "machine": info.get("machine", "unknown"),
                "logical_cpus": info.get("logical_cpus"),
                "threads": self.threads,
                "versions": {"apache-tvm": info.get("tvm", "unknown"), "python": info.get("python", "unknown")},
            },
            "attempts": self.attempts,
            "servers": [
                *({"address": d["address"], "outcome": f"dropped: {d['error']}"} for d in self.dropped),
                {"address": info.get("address"), "outcome": "measured"},
            ],
        }
        if self.emulated:
            record["note"] = EMULATED_NOTE
        return record


@dataclass
class DeviceRun:
    """What a run measured (``results``, in completion order) and what failed, by artifact name, with why."""

    results: dict[str, DeviceResult] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


class _Dropped(Exception):
    """The session died (device gone, socket closed, deadline passed): retry on a new one."""


def _deadline(fn: Callable[[], object], timeout_s: float, what: str):
    """``fn()`` in a daemon thread, abandoned after ``timeout_s`` (a blocked socket read cannot be interrupted)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name=f"repfx-rpc-{what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _Dropped(f"{what} did not finish within {timeout_s:.0f} s")
    if "error" in box:
        # popped, not just read: box -> error -> traceback -> run's frame -> box would be a cycle that keeps the
        # RPC session (and so the device) held until the garbage collector happens to run
        raise box.pop("error")
    return box.pop("value", None)


def _alive(session: DeviceSession) -> bool:
    try:
        _deadline(lambda: session.session.get_function("runtime.NumThreads")(), _PROBE_TIMEOUT_S, "probe")
        return True
    except Exception:  # any failure to answer means the session is gone
        return False


def _device_info(session: DeviceSession, tracker: RpcEndpoint) -> dict:
    base = {"key": session.key, "address": session.address, "tracker": str(tracker)}
    try:
        info = json.loads(session.session.get_function(DEVICE_INFO_FUNC)())
    except Exception:  # a plain tvm.exec.rpc_server has no such function
        return {
            **base,
            "server": "tvm.exec.rpc_server (no repfx.device_info: machine and emulation unknown)",
            "emulated": False,
        }
    return {**info, **base}


def _machine(triple_or_machine: str) -> str:
    """``aarch64-linux-gnu`` / ``arm64`` -> ``aarch64``, ``x86_64-linux-gnu`` -> ``x86_64``; ``""`` when unknown."""
    arch = triple_or_machine.split("-")[0].lower()
    if arch in ("", "detect", "unknown"):
        return ""
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, "arm" if arch.startswith(("armv", "thumb")) else arch)


def _check_machine(manifest: dict, info: dict, address: str) -> None:
    """Refuse before uploading when the device says it is another architecture than the artifact's."""
    built = _machine(str(manifest.get("target", {}).get("mtriple", "")))
    device = _machine(str(info.get("machine", "")))
    if built and device and built != device:
        raise ModelLoadError(
            f"The artifact is built for {built}, but the device {address} is {device}.",
            "Compile for that device's target (--target), or use the key of a device of the right kind.",
        )


def _check_inputs(specs: tuple[InputSpec, ...], inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(inputs) != len(specs) or any(
        tuple(np.shape(x)) != s.shape or str(np.asarray(x).dtype) != s.dtype for s, x in zip(specs, inputs)
    ):
        got = [f"{np.asarray(x).dtype}[{','.join(map(str, np.shape(x)))}]" for x in inputs]
        raise InputShapeError(
            f"The artifact takes {[str(s) for s in specs]}, got {got}.", "Feed the compiled shapes, or recompile."
        )
    return [np.ascontiguousarray(x) for x in inputs]


def _time_on_device(vm, dev, tensors, timing: TimingConfig) -> LatencyStats:
    vm.set_input("main", *tensors)

    def calls_s(n: int) -> list[float]:
        # number=1: one sample per call, as local timing takes; time_evaluator adds one discarded call itself
        return [float(t) for t in vm.time_evaluator("invoke_stateful", dev, number=1, repeat=n)("main").results]

    def once() -> LatencyStats:
        warm = calls_s(max(1, timing.warmup))
        per_call_s = max(float(np.median(warm)), 1e-7)
        repeats = max(timing.repeats, min(timing.max_repeats, math.ceil(timing.min_time_s / per_call_s)))
        return summarize([s * 1e3 for s in calls_s(repeats)], timing.warmup)

    return best_of(once, timing)


def _measure_one(
    session: DeviceSession,
    job: DeviceJob,
    samples,
    timing_inputs,
    timing: TimingConfig,
    threads: int,
    tracker: RpcEndpoint,
) -> DeviceResult:
    import tvm

    from repfx_deploy.compile.link import LIBRARY_NAME
    from repfx_deploy.compile.manifest import manifest_inputs, read_manifest
    from repfx_deploy.compile.tvm_runtime import AFFINITY_BIG, to_numpy

    manifest = read_manifest(job.artifact_dir)
    library = job.artifact_dir / manifest.get("library", LIBRARY_NAME)
    if library.suffix != ".so":
        raise ModelLoadError(
            f"{library.name} holds object files, not a library a device can load.",
            "Link it first with the command in manifest.json (Android: the NDK), or use a target whose link is 'shared'.",
        )
    specs = manifest_inputs(manifest)
    samples = [_check_inputs(specs, s) for s in samples]
    timing_inputs = _check_inputs(specs, timing_inputs)
    remote = session.session
    info = _device_info(session, tracker)
    _check_machine(manifest, info, session.address)
    _check_upload_size(library, info, session.address)
    name = f"repfx-{uuid.uuid4().hex[:8]}-{library.name}"  # sessions of one server share nothing, but be safe
    try:
        remote.upload(str(library), name)
    except Exception as e:
        if UPLOAD_REFUSED not in str(e):
            raise  # the device dropped mid-upload: the caller probes the session and retries
        raise ModelLoadError(
            f"The device {session.address} refused {library}: {_server_message(e, UPLOAD_REFUSED)}",
            "Restart the device server with a larger --max-upload-mb, or shrink the model.",
        ) from e
    try:
        lib = remote.load_module(name)
    except Exception as e:
        raise ModelLoadError(
            f"The device {session.address} ({info.get('machine', 'unknown machine')}) cannot load {library}: {e}",
            "Compile for that device's target (--target), or use the key of a device of the right kind.",
        ) from e
    dev = remote.cpu()
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    wanted = threads or int(info.get("logical_cpus") or 0) or 1
    remote.get_function("runtime.config_threadpool")(AFFINITY_BIG, wanted)
    in_force = int(remote.get_function("runtime.NumThreads")())
    outputs = [to_numpy(vm["main"](*[tvm.runtime.tensor(x, dev) for x in s])) for s in samples]
    stats = _time_on_device(vm, dev, [tvm.runtime.tensor(x, dev) for x in timing_inputs], timing)
    return DeviceResult(job.name, stats, outputs, in_force, info, attempts=1)


def _check_upload_size(library: Path, info: dict, address: str) -> None:
    """Refuse before sending when the library is over the upload limit the server announced."""
    limit = info.get("max_upload_bytes")
    size = library.stat().st_size
    if isinstance(limit, int) and size > limit:
        raise ModelLoadError(
            f"{library} is {size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB the device server {address} "
            "accepts.",
            "Restart the device server with a larger --max-upload-mb, or shrink the model.",
        )


def _server_message(error: Exception, marker: str) -> str:
    """The line of a TVM RPC error that holds the server's own message."""
    text = str(error)
    return next((line.strip() for line in text.splitlines() if marker in line), text.strip())


def _request(config: RpcConfig) -> DeviceSession:
    """``request_session`` under a deadline: TVM's connect to the handed-out server has no timeout of its own."""
    limit_s = config.wait_s + 30.0
    try:
        return _deadline(
            lambda: request_session(
                config.endpoint,
                config.key,
                wait_s=config.wait_s,
                session_timeout_s=config.session_timeout_s,
                token_file=config.token_file,
            ),
            limit_s,
            "requesting a device",
        )
    except _Dropped as e:
        raise MeasureError(
            f"Getting a session on {config.key!r} via {config.endpoint} took over {limit_s:.0f} s.",
            "Check that the device server answers (restart it), then rerun.",
        ) from e


def measure_on_device(
    jobs: Sequence[DeviceJob],
    samples: Sequence[Sequence[np.ndarray]],
    timing_inputs: Sequence[np.ndarray],
    config: RpcConfig,
    timing: TimingConfig = _DEFAULT_TIMING,
    on_result: Callable[[DeviceResult], None] | None = None,
) -> DeviceRun:
    """Measure each job on one device of ``config.key``; outputs for ``samples``, latency on ``timing_inputs``.

    Raises ``MeasureError`` when nothing could be measured because the tracker or the key is wrong (fast: no
    waiting on a device that is not registered). Otherwise returns a ``DeviceRun``: every completed result,
    and for each job that failed the reason (after ``config.retries`` retries where the device dropped).
    """
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    run = DeviceRun()
    session: DeviceSession | None = None
    for index, job in enumerate(jobs):
        errors: list[str] = []
        dropped: list[dict] = []
        for attempt in range(config.retries + 1):
            if session is None:
                try:
                    session = _request(config)
                except DeviceUnreachableError as e:  # died since it registered: the tracker has others
                    errors.append(f"attempt {attempt + 1}: {e.problem}")
                    dropped.append({"address": e.address, "error": e.problem})
                    log.warning("%s: %s", job.name, errors[-1])
                    continue
                except MeasureError as e:
                    if not run.results and not run.failures and not errors:
                        raise  # the first request: a wrong tracker or key is the user's to fix, at once
                    reason = "; ".join(errors + [e.problem])
                    for rest in jobs[index:]:
                        run.failures[rest.name] = reason
                    return run
            current = session
            try:
                # bound now, not looked up when called: a worker that outlives its deadline must keep measuring
                # the session and job it was given, not the next iteration's
                measure = functools.partial(
                    _measure_one, current, job, samples, timing_inputs, timing, config.threads, config.endpoint
                )
                result = _deadline(
                    measure,
                    config.attempt_timeout_s,
                    f"measuring {job.name}",
                )
            except Exception as e:  # TVM reports a closed socket as its own error types
                why = e.problem if isinstance(e, RepfxError) else f"{type(e).__name__}: {e}"
                if not isinstance(e, _Dropped) and _alive(current):
                    run.failures[job.name] = why  # the device is fine, the artifact is not: retrying cannot help
                    break
                errors.append(f"attempt {attempt + 1}: device {current.address} dropped ({why})")
                dropped.append({"address": current.address, "error": why})
                session = None
                log.warning(
                    "%s: %s; %s",
                    job.name,
                    errors[-1],
                    "retrying on a new session" if attempt < config.retries else "giving up",
                )
            else:
                result.attempts = attempt + 1
                result.dropped = dropped
                run.results[job.name] = result
                if on_result is not None:
                    on_result(result)
                break
        else:
            run.failures[job.name] = "; ".join(errors)
    return run
