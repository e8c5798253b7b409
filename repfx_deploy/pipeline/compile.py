"""``compile``: a torch model or ONNX file -> a TVM library for a target, verified against ONNX Runtime."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from repfx_deploy.atomic import atomic_dir, claims_output
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.ingest.loader import LoadOptions, load_model
from repfx_deploy.lower.onnx_export import ExportConfig
from repfx_deploy.measure.runner import run_all
from repfx_deploy.pipeline.artifacts import (
    Artifacts,
    compile_checked,
    export_checked,
    relativize_manifest,
    relocate,
)
from repfx_deploy.report import strict_json
from repfx_deploy.targets import get_profile, resolve_threads, resolve_tvm_target
from repfx_deploy.verify import compare

VERIFY_SAMPLES = 4


@dataclass(frozen=True)
class CompileRequest:
    source: Path
    out_dir: Path
    load: LoadOptions = LoadOptions()
    target: str = "host"
    target_file: Path | None = None
    threads: int = 0
    tune_trials: int = 0
    force: bool = False
    rpc: str | None = None  # tracker HOST:PORT: tune on (and verify on) a device of the target
    rpc_key: str | None = None  # the device's key there (default: the profile's rpc_key, else its name)


@claims_output  # the output is locked and checked before any work, and stays locked until written
def compile_model(request: CompileRequest) -> dict:
    """Compile ``request.source`` into ``request.out_dir`` (written atomically); returns a JSON-ready summary.

    An artifact that runs here is checked against ONNX Runtime on seeded random inputs before it is put in
    place. A cross-compiled one is checked on the device when ``rpc`` names a tracker (its outputs are fetched
    back; ``verification["device"]`` says which), else ``verification`` is ``None``. With ``rpc`` and
    ``tune_trials``, MetaSchedule times its candidates on that device.
    """
    from repfx_deploy.compile.config import RpcTuning
    from repfx_deploy.compile.link import runs_here

    profile = get_profile(request.target, request.target_file)
    threads = resolve_threads(profile, request.threads)
    loaded = load_model(request.source, request.load)
    target = resolve_tvm_target(profile, threads)
    tune_rpc = None
    if request.rpc is not None:
        from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
        from repfx_deploy.measure.rpc.tracker import check_device
        from repfx_deploy.pipeline.bench_rpc import device_key

        tune_rpc = RpcTuning(str(RpcEndpoint.parse(request.rpc)), device_key(profile, request.rpc_key))
        check_device(RpcEndpoint.parse(tune_rpc.tracker), tune_rpc.key)  # before minutes of compiling
    samples = [random_inputs(loaded.input_specs, seed=s) for s in range(VERIFY_SAMPLES)]
    with (
        tempfile.TemporaryDirectory(prefix="repfx-compile-") as scratch,
        atomic_dir(request.out_dir, force=request.force) as tmp,
    ):
        if loaded.module is not None:
            art = export_checked(
                loaded.module,
                loaded.input_specs,
                Path(scratch) / "model.onnx",
                samples=samples,
                export_config=ExportConfig(),
                threads=threads,
                source_sha256=loaded.sha256,
            )
        else:
            assert loaded.onnx_path is not None
            art = Artifacts(onnx_path=loaded.onnx_path, export={})
        compile_checked(
            art,
            tmp,
            samples=samples,
            tvm_target=target,
            tune_trials=request.tune_trials,
            threads=threads,
            link=profile.link,
            tune_rpc=tune_rpc,
        )
        if art.compile_failure is not None:
            raise art.compile_failure
        verification = None
        if runs_here(target, profile.link):
            verification = next(
                v for v in art.verification if (v["reference"], v["candidate"]) == ("onnxruntime", "tvm")
            )
        elif tune_rpc is not None and profile.link == "shared":
            from repfx_deploy.measure.runtimes import OrtRunner

            reference = art.outputs.get("onnxruntime") or run_all(OrtRunner(art.onnx_path, threads), samples)
            verification = _verify_on_device(tmp, samples, reference, tune_rpc)
        if verification is not None:
            strict_json.write(tmp / "verification.json", verification)
        relativize_manifest(tmp, tmp)
        summary = relocate(art.compile, tmp, request.out_dir)
    return {
        "source": str(request.source),
        "target": profile.name,
        "tvm_target": target,
        "threads": threads,
        "artifact": summary,
        # a cross-compiled artifact cannot be loaded here; it is verified only on a device reached with --rpc
        "verification": verification,
    }


def _verify_on_device(artifact_dir: Path, samples, reference, rpc) -> dict:
    """Run the artifact on a device from the tracker and compare its outputs with ONNX Runtime's (here)."""
    from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
    from repfx_deploy.measure.rpc.remote import RUNTIME, RpcConfig
    from repfx_deploy.measure.timing import TimingConfig
    from repfx_deploy.pipeline.latency import measure_rpc

    config = RpcConfig(RpcEndpoint.parse(rpc.tracker), rpc.key)
    quick = TimingConfig(warmup=0, repeats=3, min_time_s=0.0, remeasure=0)  # only the outputs are wanted
    result = measure_rpc({RUNTIME: artifact_dir}, samples, samples[0], config, quick)[RUNTIME]
    agreement = compare(reference, result.outputs, reference_name="onnxruntime", candidate_name=RUNTIME).to_dict()
    return {**agreement, "device": {k: result.device.get(k) for k in ("key", "address", "machine", "emulated")}}
