"""``compile``: a torch model or ONNX file -> a TVM library for a target, verified against ONNX Runtime."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from repfx_deploy.atomic import atomic_dir, check_output
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.ingest.loader import LoadOptions, load_model
from repfx_deploy.lower.onnx_export import ExportConfig, export_onnx
from repfx_deploy.pipeline.artifacts import relocate
from repfx_deploy.pipeline.evaluate import run_all
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


def compile_model(request: CompileRequest) -> dict:
    """Compile ``request.source`` into ``request.out_dir`` (written atomically); returns a JSON-ready summary.

    An artifact that runs here is checked against ONNX Runtime on seeded random inputs before it is put in
    place; a cross-compiled one cannot be, and ``verification`` is then ``None``.
    """
    from repfx_deploy.compile.link import runs_here
    from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.measure.runtimes import OrtRunner

    check_output(request.out_dir, force=request.force)
    profile = get_profile(request.target, request.target_file)
    threads = resolve_threads(profile, request.threads)
    loaded = load_model(request.source, request.load)
    target = resolve_tvm_target(profile, threads)
    with tempfile.TemporaryDirectory(prefix="repfx-compile-") as scratch, atomic_dir(request.out_dir, force=request.force) as tmp:
        onnx_path = loaded.onnx_path
        if loaded.is_torch:
            onnx_path = export_onnx(loaded.module, loaded.input_specs, Path(scratch) / "model.onnx", config=ExportConfig(), source_sha256=loaded.sha256).path
        assert onnx_path is not None
        artifact = compile_onnx(onnx_path, tmp, CompileConfig(target=target, tune_trials=request.tune_trials, link=profile.link))
        verification = None
        if runs_here(target, profile.link):
            samples = [random_inputs(loaded.input_specs, seed=s) for s in range(VERIFY_SAMPLES)]
            ort, tvm = OrtRunner(onnx_path, threads), load_tvm_runner(tmp, threads)
            verification = compare(run_all(ort, samples), run_all(tvm, samples), reference_name="onnxruntime", candidate_name="tvm").to_dict()
            (tmp / "verification.json").write_text(json.dumps(verification, indent=2) + "\n")
        summary = relocate(artifact.to_dict(), tmp, request.out_dir)
    return {
        "source": str(request.source),
        "target": profile.name,
        "tvm_target": target,
        "threads": threads,
        "artifact": summary,
        # a cross-compiled artifact cannot be loaded here; verifying it on the device needs TVM RPC
        "verification": verification,
    }
