"""``bench --rpc``: compile for the target, measure on a device from a TVM RPC tracker, verify against ONNX Runtime.

The device runs only the TVM artifact; its latency comes from the device's own timer. ONNX Runtime runs on
this machine solely as the numerical reference for the outputs fetched back from the device: a host figure
is never reported as the device's. Results from an emulated device carry ``emulated: true`` and the note
that their timings are meaningless. A device server that dies mid-measurement is replaced by another free
server of the same key (``measure.rpc.remote``); ``rpc.servers`` says which servers dropped and which measured.
A tracker with a token needs it in ``REPFX_RPC_TOKEN_FILE`` (or ``REPFX_RPC_TOKEN``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from repfx_deploy.compile.manifest import is_artifact, read_manifest
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.ingest.loader import load_model
from repfx_deploy.targets import TargetProfile

if TYPE_CHECKING:
    from repfx_deploy.measure.rpc.remote import RpcConfig

VERIFY_SAMPLES = 4


def device_key(profile: TargetProfile, rpc_key: str | None) -> str:
    """``--rpc-key``, else the profile's ``rpc_key``, else its name."""
    return rpc_key or profile.rpc_key or profile.name


def device_config(profile: TargetProfile, rpc: str, rpc_key: str | None, threads: int) -> RpcConfig:
    """The session settings for ``--rpc HOST:PORT`` (``device_key`` names the device); the tracker is asked now
    for a device of that key, so a wrong tracker or key fails before minutes of compiling."""
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.remote import RpcConfig
    from repfx_deploy.measure.rpc.tracker import check_device

    endpoint = RpcEndpoint.parse(rpc)
    config = RpcConfig(endpoint, device_key(profile, rpc_key), threads=threads)
    check_device(endpoint, config.key)
    return config


def bench_on_device(request, profile: TargetProfile) -> dict:
    """``bench`` for ``request.rpc`` (a ``pipeline.bench.BenchRequest``): see the module docstring."""
    from repfx_deploy.measure.rpc.remote import RUNTIME
    from repfx_deploy.pipeline.evaluate import Deployable, EvalData, evaluate
    from repfx_deploy.pipeline.latency import check_rpc_target

    source = Path(request.source)
    model = Deployable(tvm_dir=source) if is_artifact(source) else None
    check_rpc_target(
        profile, request.runtimes, compiles=model is None
    )  # a compiled folder is the user's to have linked
    config = device_config(profile, request.rpc, request.rpc_key, request.threads or profile.threads)
    if model is None:
        loaded = load_model(source, request.load)
        model = Deployable(module=loaded.module, onnx_path=loaded.onnx_path, input_specs=loaded.input_specs)
    specs = model.specs()
    samples = [random_inputs(specs, seed=s) for s in range(VERIFY_SAMPLES)]
    result = evaluate(
        model,
        profile,
        data=EvalData(inputs=samples),
        runtimes=("tvm",),
        timing=request.timing,
        rpc=config,
        tune_trials=request.tune_trials,
    )
    record = {
        **result.latency["tvm"].to_dict(),
        "runtime": RUNTIME,
    }  # bench names the device's runtime as it always has
    doc = {
        "source": str(source),
        "target": profile.name,
        "tvm_target": _manifest_target(source) if model.tvm_dir is not None else result.tvm_target,
        "threads": record["environment"]["threads"],
        "inputs": [s.to_dict() for s in specs],
        # every server the artifact was tried on, in order: those that dropped (killed, gone), then the one that
        # measured it; a finished measurement is never redone, the rest moves to another server of the key
        "rpc": {"tracker": str(config.endpoint), "key": config.key, "servers": record["servers"]},
        "device": record["device"],
        "emulated": record["emulated"],
        "results": {RUNTIME: record},
        "latency_ms": {RUNTIME: record["latency_ms"]},
        "verification": [dict(v) for v in result.verification],
        "failures": {},
    }
    if record["emulated"]:
        doc["note"] = record["note"]
    if model.onnx_path is None:
        doc["verification_note"] = (
            "a compiled artifact folder has no ONNX model beside it: outputs not checked against ONNX Runtime"
        )
    return doc


def _manifest_target(folder: Path) -> dict:
    return read_manifest(folder)["target"]
