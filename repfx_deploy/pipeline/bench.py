"""``bench``: latency of a torch model, an ONNX file or a compiled TVM artifact on one or more runtimes.

What can run depends on what was given: a torch model runs everywhere (ONNX and TVM artifacts are made in a
temporary folder first); an ONNX file runs on ONNX Runtime and TVM; a TVM artifact folder only on TVM.
With ``rpc`` (a tracker's ``HOST:PORT``) the TVM artifact is measured on a device instead (``bench_rpc``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repfx_deploy.compile.manifest import is_artifact
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.errors import InputError
from repfx_deploy.ingest.loader import LoadOptions, load_model
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.targets import get_profile


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
    from repfx_deploy.pipeline.evaluate import Deployable, EvalData, evaluate

    profile = get_profile(request.target, request.target_file)
    if request.rpc is not None:
        from repfx_deploy.pipeline.bench_rpc import bench_on_device

        return bench_on_device(request, profile)
    _refuse_foreign(profile)  # every figure measured here would be this machine's, not the device's
    source = Path(request.source)
    if is_artifact(source):
        model = Deployable(tvm_dir=source)
    else:
        loaded = load_model(source, request.load)
        model = Deployable(module=loaded.module, onnx_path=loaded.onnx_path, input_specs=loaded.input_specs)
    specs = model.specs()
    result = evaluate(
        model,
        profile,
        data=EvalData(inputs=[random_inputs(specs)]),
        runtimes=request.runtimes or None,
        threads=request.threads,
        timing=request.timing,
        tune_trials=request.tune_trials,
    )
    results = {name: lat.to_dict() for name, lat in result.latency.items()}
    return {
        "source": str(source),
        "target": profile.name,
        "threads": result.threads,
        "inputs": [s.to_dict() for s in specs],
        "results": results,
        "latency_ms": result.latency_ms,
        "verification": [dict(v) for v in result.verification],
    }


def _refuse_foreign(profile) -> None:
    from repfx_deploy.compile.link import runs_here

    if not runs_here(profile.target_dict, profile.link):
        raise InputError(
            f"Target {profile.name!r} is another device; its TVM artifact cannot run on this machine.",
            f"Measure on the device over TVM RPC (bench --target {profile.name} --rpc HOST:PORT; see "
            "`repfx-deploy device --help`), or bench with --target host.",
        )
