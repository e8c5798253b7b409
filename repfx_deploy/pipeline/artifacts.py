"""Build and check the deployable artifacts of one model: ONNX (verified against torch) and TVM (against ORT)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repfx_deploy.errors import CompileError
from repfx_deploy.lower.onnx_export import ExportConfig, export_onnx
from repfx_deploy.pipeline.evaluate import run_all
from repfx_deploy.spec import InputSpec
from repfx_deploy.verify import compare

if TYPE_CHECKING:
    import torch.nn as nn

log = logging.getLogger("repfx_deploy.pipeline")


@dataclass
class Artifacts:
    """Paths and checks of one model's artifacts; ``compile_error`` is set when TVM could not take it."""

    onnx_path: Path
    export: dict
    tvm_dir: Path | None = None
    compile: dict = field(default_factory=dict)
    compile_error: str | None = None
    verification: list[dict] = field(default_factory=list)
    tvm_runs_here: bool = True  # False for a cross-compiled artifact: nothing here can load it


def build_artifacts(
    module: "nn.Module",
    specs: tuple[InputSpec, ...],
    out_dir: Path,
    *,
    samples: list[list[np.ndarray]],
    export_config: ExportConfig,
    tvm_target: dict | None,
    tune_trials: int,
    threads: int,
    source_sha256: str,
    link: str = "shared",
) -> Artifacts:
    """Export ``module`` to ``out_dir/model.onnx`` and compile it to ``out_dir/tvm/``; verify each on ``samples``.

    A ``CompileError`` does not propagate: it is recorded, so the caller can keep the ONNX artifact and report
    the failure. ``tvm_target`` ``None`` skips compilation.
    """
    from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner

    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("exporting to ONNX: %s", out_dir / "model.onnx")
    result = export_onnx(module, specs, out_dir / "model.onnx", config=export_config, source_sha256=source_sha256)
    artifacts = Artifacts(onnx_path=result.path, export=result.to_dict())
    torch_out = run_all(TorchRunner(module, threads), samples)
    ort_out = run_all(OrtRunner(result.path, threads), samples)
    artifacts.verification.append(compare(torch_out, ort_out, reference_name="torch", candidate_name="onnxruntime").to_dict())
    if tvm_target is None:
        return artifacts
    from repfx_deploy.compile.link import runs_here
    from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner

    tvm_dir = out_dir / "tvm"
    tvm_dir.mkdir()
    log.info("compiling with TVM for %s (%d tuning trials)", tvm_target.get("mcpu", tvm_target.get("mtriple")), tune_trials)
    try:
        compiled = compile_onnx(result.path, tvm_dir, CompileConfig(target=tvm_target, tune_trials=tune_trials, link=link))
    except CompileError as e:
        log.error("TVM compile failed: %s", e)
        artifacts.compile_error = str(e)
        return artifacts
    artifacts.tvm_dir = tvm_dir
    artifacts.compile = compiled.to_dict()
    if not runs_here(tvm_target, link):
        artifacts.tvm_runs_here = False
        return artifacts
    log.info("verifying TVM against ONNX Runtime and torch on %d inputs", len(samples))
    tvm_out = run_all(load_tvm_runner(tvm_dir, threads), samples)
    artifacts.verification.append(compare(ort_out, tvm_out, reference_name="onnxruntime", candidate_name="tvm").to_dict())
    artifacts.verification.append(compare(torch_out, tvm_out, reference_name="torch", candidate_name="tvm").to_dict())
    return artifacts


def relocate(obj: Any, old: Path, new: Path) -> Any:
    """``obj`` with every path string under ``old`` moved under ``new``: artifacts are built in a temporary
    folder that is renamed at the end, and what they record must name where they will be."""
    if isinstance(obj, str):
        return obj.replace(str(old), str(new)) if str(old) in obj else obj
    if isinstance(obj, dict):
        return {k: relocate(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relocate(v, old, new) for v in obj]
    return obj


def relocate_manifest(tvm_dir: Path | None, old: Path, new: Path) -> None:
    """Rewrite ``tvm_dir/manifest.json`` so its paths name the final folder."""
    if tvm_dir is None or not (tvm_dir / "manifest.json").exists():
        return
    manifest = json.loads((tvm_dir / "manifest.json").read_text())
    (tvm_dir / "manifest.json").write_text(json.dumps(relocate(manifest, old, new), indent=2) + "\n")
