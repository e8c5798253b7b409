"""The deployable forms of one model and how they are built and checked: the torch module, its ONNX export
(verified against torch with ONNX Runtime) and its TVM build (verified against both where it runs here).

``Deployable`` names the forms a model exists in; ``complete`` builds the ones a runtime needs and lacks.
``build_artifacts`` is what ``compress`` writes into its result folder. Paths recorded in a result folder
(manifest.json, report.json) are relative to it: ``relative_paths`` / ``relativize_manifest``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repfx_deploy.compile.manifest import write_manifest
from repfx_deploy.errors import CompileError, InputError, TuningDatabaseError
from repfx_deploy.lower.onnx_export import ExportConfig, export_onnx
from repfx_deploy.measure.runner import run_all
from repfx_deploy.spec import InputSpec
from repfx_deploy.verify import compare

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.compile.config import RpcTuning

log = logging.getLogger("repfx_deploy.pipeline")


@dataclass
class Artifacts:
    """Paths and checks of one model's artifacts; ``compile_error`` is set when TVM could not take it."""

    onnx_path: Path
    export: dict
    tvm_dir: Path | None = None
    compile: dict = field(default_factory=dict)
    compile_error: str | None = None
    compile_failure: CompileError | None = field(default=None, repr=False)  # the error itself, to raise again
    compile_s: float | None = None  # wall time of the TVM build
    verification: list[dict] = field(default_factory=list)
    tvm_runs_here: bool = True  # False for a cross-compiled artifact: nothing here can load it
    # each runtime's outputs on the verification samples, kept to check the next form against (not reported)
    outputs: dict[str, list[list[np.ndarray]]] = field(default_factory=dict, repr=False)


def export_checked(
    module: nn.Module,
    specs: tuple[InputSpec, ...],
    onnx_path: Path,
    *,
    samples: list[list[np.ndarray]],
    export_config: ExportConfig,
    threads: int,
    source_sha256: str = "",
    force: bool = True,
) -> Artifacts:
    """Export ``module`` to ``onnx_path`` and check ONNX Runtime's outputs against torch's on ``samples``
    (``threads`` 0: every core)."""
    from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting to ONNX: %s", onnx_path)
    result = export_onnx(module, specs, onnx_path, config=export_config, source_sha256=source_sha256, force=force)
    artifacts = Artifacts(onnx_path=result.path, export=result.to_dict())
    torch_out = run_all(TorchRunner(module, threads), samples)
    ort_out = run_all(OrtRunner(result.path, threads), samples)
    artifacts.outputs = {"torch": torch_out, "onnxruntime": ort_out}
    artifacts.verification.append(
        compare(torch_out, ort_out, reference_name="torch", candidate_name="onnxruntime").to_dict()
    )
    return artifacts


def compile_checked(
    artifacts: Artifacts,
    tvm_dir: Path,
    *,
    samples: list[list[np.ndarray]],
    tvm_target: dict,
    tune_trials: int,
    threads: int,
    link: str = "shared",
    tune_rpc: RpcTuning | None = None,
) -> Artifacts:
    """Compile ``artifacts.onnx_path`` into ``tvm_dir``; where the build runs here, check it against ONNX Runtime
    and torch on ``samples``. A ``CompileError`` does not propagate: it is recorded in ``compile_error``."""
    from repfx_deploy.compile.link import runs_here
    from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.measure.runtimes import OrtRunner

    tvm_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "compiling with TVM for %s (%d tuning trials)", tvm_target.get("mcpu", tvm_target.get("mtriple")), tune_trials
    )
    started = time.perf_counter()
    try:
        compiled = compile_onnx(
            artifacts.onnx_path,
            tvm_dir,
            CompileConfig(
                target=tvm_target, tune_trials=tune_trials, link=link, tune_rpc=tune_rpc if tune_trials > 0 else None
            ),
        )
    except TuningDatabaseError:
        raise  # not the model's fault: the fix is --fresh-tuning, not another runtime
    except CompileError as e:
        log.error("TVM compile failed: %s", e)
        artifacts.compile_error, artifacts.compile_failure = str(e), e
        return artifacts
    artifacts.compile_s = round(time.perf_counter() - started, 3)
    artifacts.tvm_dir = tvm_dir
    artifacts.compile = compiled.to_dict()
    if not runs_here(tvm_target, link):
        artifacts.tvm_runs_here = False
        return artifacts
    log.info("verifying TVM against ONNX Runtime and torch on %d inputs", len(samples))
    if "onnxruntime" not in artifacts.outputs:
        artifacts.outputs["onnxruntime"] = run_all(OrtRunner(artifacts.onnx_path, threads), samples)
    tvm_out = run_all(load_tvm_runner(tvm_dir, threads), samples)
    for reference in ("onnxruntime", "torch"):
        if reference in artifacts.outputs:
            artifacts.verification.append(
                compare(artifacts.outputs[reference], tvm_out, reference_name=reference, candidate_name="tvm").to_dict()
            )
    return artifacts


def build_artifacts(
    module: nn.Module,
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
    artifacts = export_checked(
        module,
        specs,
        out_dir / "model.onnx",
        samples=samples,
        export_config=export_config,
        threads=threads,
        source_sha256=source_sha256,
    )
    if tvm_target is None:
        return artifacts
    return compile_checked(
        artifacts,
        out_dir / "tvm",
        samples=samples,
        tvm_target=tvm_target,
        tune_trials=tune_trials,
        threads=threads,
        link=link,
    )


@dataclass(frozen=True)
class Deployable:
    """One model in the forms it exists in: the torch ``module``, an ONNX file, a compiled TVM artifact folder.

    Each runtime uses the form it runs (torch the module, onnxruntime the ONNX file, tvm the folder); a form
    that is missing is built from the one before it when a runtime needs it (``complete``). ``input_specs`` are
    needed for a module alone; an ONNX file and a TVM folder say their own.
    """

    module: nn.Module | None = None
    onnx_path: Path | None = None
    tvm_dir: Path | None = None
    input_specs: tuple[InputSpec, ...] = ()

    @classmethod
    def of(cls, source: Deployable | nn.Module | Path | str, input_specs: tuple[InputSpec, ...] = ()) -> Deployable:
        """``source`` as a ``Deployable``: a module, an ``.onnx`` file, or a compiled artifact folder."""
        from repfx_deploy.compile.manifest import is_artifact

        if isinstance(source, Deployable):
            return replace(source, input_specs=source.input_specs or tuple(input_specs))
        if isinstance(source, (str, Path)):
            path = Path(source)
            if is_artifact(path):
                return cls(tvm_dir=path, input_specs=tuple(input_specs))
            if path.suffix == ".onnx" and path.is_file():
                return cls(onnx_path=path, input_specs=tuple(input_specs))
            raise InputError(
                f"{str(path)!r} is neither an .onnx file nor a compiled artifact folder (with manifest.json).",
                "Pass an nn.Module, an .onnx file or a folder written by compile; load other formats with load_model.",
            )
        return cls(module=source, input_specs=tuple(input_specs))

    @property
    def forms(self) -> tuple[str, ...]:
        """The runtimes this model can run on as it is, before anything is built."""
        return tuple(
            rt
            for rt, have in (
                ("torch", self.module),
                ("onnxruntime", self.onnx_path or self.module),
                ("tvm", self.tvm_dir or self.onnx_path or self.module),
            )
            if have is not None
        )

    def specs(self) -> tuple[InputSpec, ...]:
        """The model's inputs: ``input_specs`` when given, else what the ONNX file or the manifest says."""
        if self.input_specs:
            return self.input_specs
        if self.tvm_dir is not None:
            from repfx_deploy.compile.manifest import manifest_inputs, read_manifest

            return manifest_inputs(read_manifest(self.tvm_dir))
        if self.onnx_path is not None:
            import onnx

            from repfx_deploy.onnx_signature import graph_input_specs

            return graph_input_specs(onnx.load(str(self.onnx_path), load_external_data=False))
        from repfx_deploy.errors import InputShapeError

        raise InputShapeError(
            "A PyTorch module's input shapes are not known.", "Pass input_specs (--input-shape 1,3,32,32)."
        )


def complete(
    model: Deployable,
    work: Path,
    *,
    onnx: bool,
    tvm: bool,
    samples: list[list[np.ndarray]],
    threads: int,
    tvm_target: dict | None = None,
    tune_trials: int = 0,
    link: str = "shared",
    tune_rpc: RpcTuning | None = None,
) -> tuple[Deployable, dict[str, Any]]:
    """``model`` with an ONNX file (``onnx``) and a TVM folder (``tvm``) where it lacks them, built under ``work``
    and checked on ``samples``; also what was built (export and compile records, their checks)."""
    built: dict[str, Any] = {}
    compile_here = tvm and model.tvm_dir is None
    export_here = model.onnx_path is None and (onnx or compile_here)
    if not (export_here or compile_here):
        return model, built
    specs = model.specs()
    if export_here:
        if model.module is None:
            raise InputError(
                "A compiled TVM artifact alone cannot be turned back into ONNX.",
                "Pass the ONNX file or the torch model too.",
            )
        artifacts = export_checked(
            model.module, specs, work / "model.onnx", samples=samples, export_config=ExportConfig(), threads=threads
        )
        built["export"] = artifacts.export
    else:
        assert model.onnx_path is not None
        artifacts = Artifacts(onnx_path=model.onnx_path, export={})
    if compile_here:
        assert tvm_target is not None
        compile_checked(
            artifacts,
            work / "tvm",
            samples=samples,
            tvm_target=tvm_target,
            tune_trials=tune_trials,
            threads=threads,
            link=link,
            tune_rpc=tune_rpc,
        )
        if artifacts.compile_failure is not None:
            raise artifacts.compile_failure
        built["compile"] = {**artifacts.compile, "compile_s": artifacts.compile_s}
    built["verification"] = artifacts.verification
    return replace(
        model, onnx_path=artifacts.onnx_path, tvm_dir=artifacts.tvm_dir or model.tvm_dir, input_specs=specs
    ), built


def relative_paths(obj: Any, folder: Path) -> Any:
    """``obj`` with every path string under ``folder`` written relative to it (``folder`` itself: ``"."``).

    Result folders are assembled in a temporary sibling and renamed into place (``atomic_dir``), so what they
    record must not name where they were built, nor where they happen to be: only what is inside them."""
    root = str(folder).rstrip("/")
    if isinstance(obj, str):
        if obj == root:
            return "."
        return obj.replace(root + "/", "") if root + "/" in obj else obj
    if isinstance(obj, dict):
        return {k: relative_paths(v, folder) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relative_paths(v, folder) for v in obj]
    return obj


def relocate(obj: Any, old: Path, new: Path) -> Any:
    """``obj`` with every path string under ``old`` moved under ``new`` (for summaries printed by a command,
    which name where the folder is; what is written into the folder uses ``relative_paths``)."""
    if isinstance(obj, str):
        return obj.replace(str(old), str(new)) if str(old) in obj else obj
    if isinstance(obj, dict):
        return {k: relocate(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relocate(v, old, new) for v in obj]
    return obj


def relativize_manifest(tvm_dir: Path | None, folder: Path) -> None:
    """Rewrite ``tvm_dir/manifest.json`` so any path under ``folder`` in it is relative to ``folder``."""
    if tvm_dir is None or not (tvm_dir / "manifest.json").exists():
        return
    manifest = json.loads((tvm_dir / "manifest.json").read_text())
    write_manifest(tvm_dir / "manifest.json", relative_paths(manifest, folder))
