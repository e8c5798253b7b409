"""``bench``: latency of a torch model, an ONNX file or a compiled TVM artifact on one or more runtimes.

What can run depends on what was given: a torch model runs everywhere (ONNX and TVM artifacts are made in a
temporary folder first); an ONNX file runs on ONNX Runtime and TVM; a TVM artifact folder only on TVM.
With ``rpc`` (a tracker's ``HOST:PORT``) the TVM artifact is measured on a device instead (``bench_rpc``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from repfx_deploy.compile.manifest import is_artifact, manifest_inputs, read_manifest
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.errors import InputError
from repfx_deploy.ingest.loader import LoadOptions, load_model
from repfx_deploy.lower.onnx_export import ExportConfig, export_onnx
from repfx_deploy.measure.bench import bench_runners
from repfx_deploy.measure.runtimes import RUNTIMES
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import get_profile, resolve_threads, resolve_tvm_target
from repfx_deploy.verify import compare


@dataclass(frozen=True)
class BenchRequest:
    source: Path
    runtimes: tuple[str, ...] = ()  # empty: every runtime that can run what was given
    load: LoadOptions = LoadOptions()
    target: str = "host"
    target_file: Path | None = None
    threads: int = 0
    tune_trials: int = 0
    timing: TimingConfig = TimingConfig()
    rpc: str | None = None  # tracker HOST:PORT: measure on a device of the target
    rpc_key: str | None = None  # the device's key at the tracker (default: the profile's rpc_key, else its name)


def bench(request: BenchRequest) -> dict:
    """Measure every requested runtime back to back on the same seeded inputs; verify their outputs agree."""
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner

    profile = get_profile(request.target, request.target_file)
    if request.rpc is not None:
        from repfx_deploy.pipeline.bench_rpc import bench_on_device

        return bench_on_device(request, profile)
    _refuse_foreign(profile)  # every figure measured here would be this machine's, not the device's
    threads = resolve_threads(profile, request.threads)
    source = Path(request.source)
    unknown = set(request.runtimes) - set(RUNTIMES)
    if unknown:
        raise InputError(f"Unknown runtime(s) {sorted(unknown)}.", f"Use {', '.join(RUNTIMES)} or all.")
    explicit = bool(request.runtimes)
    wanted = set(request.runtimes or RUNTIMES) & set(profile.runtimes if not explicit else RUNTIMES)
    runners = []
    with tempfile.TemporaryDirectory(prefix="repfx-bench-") as scratch:
        work = Path(scratch)
        if is_artifact(source):
            specs = _artifact_specs(source)
            if explicit:
                _refuse(wanted - {"tvm"}, "a compiled TVM artifact", "pass the ONNX file or the torch model for those runtimes")
            runners.append(load_tvm_runner(source, threads))
            onnx_path = None
        else:
            loaded = load_model(source, request.load)
            specs = loaded.input_specs
            onnx_path = loaded.onnx_path
            if loaded.is_torch:
                if "torch" in wanted:
                    runners.append(TorchRunner(loaded.module, threads))
                if wanted & {"onnxruntime", "tvm"}:
                    onnx_path = export_onnx(loaded.module, specs, work / "model.onnx", config=ExportConfig(), source_sha256=loaded.sha256).path
            elif explicit:
                _refuse(wanted & {"torch"}, "an ONNX file", "pass the torch model to time torch eager")
            if "onnxruntime" in wanted:
                runners.append(OrtRunner(onnx_path, threads))
            if "tvm" in wanted:
                from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx

                (work / "tvm").mkdir()
                compile_onnx(onnx_path, work / "tvm", CompileConfig(target=resolve_tvm_target(profile, threads), tune_trials=request.tune_trials))
                runners.append(load_tvm_runner(work / "tvm", threads))
        inputs = random_inputs(specs)
        results = bench_runners(runners, inputs, request.timing)
        outputs = {r.name: [r.run(inputs)] for r in runners}
    names = list(outputs)
    verification = [
        compare(outputs[names[0]], outputs[n], reference_name=names[0], candidate_name=n).to_dict() for n in names[1:]
    ]
    return {
        "source": str(source),
        "target": profile.name,
        "threads": threads,
        "inputs": [s.to_dict() for s in specs],
        "results": results,
        "latency_ms": {name: r["latency_ms"] for name, r in results.items()},
        "verification": verification,
    }


def _refuse_foreign(profile) -> None:
    from repfx_deploy.compile.link import runs_here

    if not runs_here(profile.target_dict, profile.link):
        raise InputError(
            f"Target {profile.name!r} is another device; its TVM artifact cannot run on this machine.",
            f"Measure on the device over TVM RPC (bench --target {profile.name} --rpc HOST:PORT; see "
            "`repfx-deploy device --help`), or bench with --target host.",
        )


def _refuse(bad: set[str], what: str, fix: str) -> None:
    if bad:
        raise InputError(f"Cannot run {', '.join(sorted(bad))} on {what}.", f"Use --runtime with what it supports, or {fix}.")


def _artifact_specs(folder: Path) -> tuple[InputSpec, ...]:
    return manifest_inputs(read_manifest(folder))
