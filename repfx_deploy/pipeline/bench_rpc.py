"""``bench --rpc``: compile for the target, measure on a device from a TVM RPC tracker, verify against ONNX Runtime.

The device runs only the TVM artifact; its latency comes from the device's own timer. ONNX Runtime runs on
this machine solely as the numerical reference for the outputs fetched back from the device: a host figure
is never reported as the device's. Results from an emulated device carry ``emulated: true`` and the note
that their timings are meaningless.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from repfx_deploy.compile.manifest import is_artifact, manifest_inputs, read_manifest
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.errors import InputError, MeasureError
from repfx_deploy.ingest.loader import load_model
from repfx_deploy.lower.onnx_export import ExportConfig, export_onnx
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import TargetProfile, resolve_tvm_target
from repfx_deploy.verify import compare

VERIFY_SAMPLES = 4


def device_key(profile: TargetProfile, rpc_key: str | None) -> str:
    """``--rpc-key``, else the profile's ``rpc_key``, else its name."""
    return rpc_key or profile.rpc_key or profile.name


def bench_on_device(request, profile: TargetProfile) -> dict:
    """``bench`` for ``request.rpc`` (a ``pipeline.bench.BenchRequest``): see the module docstring."""
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.remote import (
        RUNTIME,
        DeviceJob,
        RpcConfig,
        measure_on_device,
    )
    from repfx_deploy.measure.rpc.tracker import check_device

    if set(request.runtimes) - {"tvm"}:
        raise InputError(
            f"Over RPC only the TVM runtime runs on the device; cannot time {sorted(set(request.runtimes) - {'tvm'})} there.",
            "Drop --runtime (or use --runtime tvm), or bench those runtimes on this machine without --rpc.",
        )
    endpoint = RpcEndpoint.parse(request.rpc)
    config = RpcConfig(endpoint, device_key(profile, request.rpc_key), threads=request.threads or profile.threads)
    check_device(endpoint, config.key)  # a wrong tracker or key fails before minutes of compiling
    source = Path(request.source)
    with tempfile.TemporaryDirectory(prefix="repfx-bench-rpc-") as scratch:
        work = Path(scratch)
        onnx_path, artifact, specs, tvm_target = _artifact(request, profile, config, source, work)
        samples = [random_inputs(specs, seed=s) for s in range(VERIFY_SAMPLES)]
        run = measure_on_device([DeviceJob(RUNTIME, artifact)], samples, samples[0], config, request.timing)
        if not run.results:
            raise MeasureError(f"Measuring on {config.key!r} via {endpoint} failed: {run.failures[RUNTIME]}",
                               "Check the device server's log; restart it, then rerun.")
        result = run.results[RUNTIME]
        verification = []
        if onnx_path is not None:
            from repfx_deploy.measure.runtimes import OrtRunner, default_threads
            from repfx_deploy.pipeline.evaluate import run_all

            reference = run_all(OrtRunner(onnx_path, default_threads()), samples)
            verification.append(compare(reference, result.outputs, reference_name="onnxruntime (this machine)", candidate_name=RUNTIME).to_dict())
    record = result.to_dict()
    doc = {
        "source": str(source),
        "target": profile.name,
        "tvm_target": tvm_target,
        "threads": result.threads,
        "inputs": [s.to_dict() for s in specs],
        "rpc": {"tracker": str(endpoint), "key": config.key},
        "device": result.device,
        "emulated": result.emulated,
        "results": {RUNTIME: record},
        "latency_ms": {RUNTIME: record["latency_ms"]},
        "verification": verification,
        "failures": run.failures,
    }
    if result.emulated:
        doc["note"] = record["note"]
    if onnx_path is None:
        doc["verification_note"] = "a compiled artifact folder has no ONNX model beside it: outputs not checked against ONNX Runtime"
    return doc


def _artifact(request, profile, config, source: Path, work: Path) -> tuple[Path | None, Path, tuple[InputSpec, ...], dict]:
    """``(onnx_path or None, artifact folder, input specs, TVM target)``: compiled here unless given compiled."""
    if is_artifact(source):
        manifest = read_manifest(source)
        return None, source, manifest_inputs(manifest), manifest["target"]
    from repfx_deploy.compile.config import RpcTuning
    from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx

    if profile.link != "shared":
        raise InputError(
            f"Target {profile.name!r} is packaged as object files ({profile.link}), which a device server cannot load.",
            "Link the artifact with the command compile writes into manifest.json, then bench that folder with --rpc.",
        )
    loaded = load_model(source, request.load)
    onnx_path = loaded.onnx_path
    if loaded.is_torch:
        onnx_path = export_onnx(loaded.module, loaded.input_specs, work / "model.onnx", config=ExportConfig(), source_sha256=loaded.sha256).path
    assert onnx_path is not None
    target = resolve_tvm_target(profile, config.threads or None)
    (work / "tvm").mkdir()
    # with --tune-trials, MetaSchedule times its candidates on the same device (database shared per target)
    tune_rpc = RpcTuning(str(config.endpoint), config.key) if request.tune_trials > 0 else None
    compile_onnx(onnx_path, work / "tvm", CompileConfig(target=target, tune_trials=request.tune_trials, link=profile.link, tune_rpc=tune_rpc))
    return onnx_path, work / "tvm", loaded.input_specs, target
