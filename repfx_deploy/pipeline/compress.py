"""``compress``: ingest -> passes -> export -> compile -> bench -> report, into one output folder.

The folder is assembled in a temporary sibling and renamed into place at the end, so a failure leaves no
half-written result. When TVM cannot compile the model, what was produced before (the ONNX artifact, a report
saying what failed) is still kept, and the command then fails.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repfx_deploy.atomic import atomic_dir, claims_output
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.errors import CompileError, InputError
from repfx_deploy.ingest.loader import LoadedModel, LoadOptions
from repfx_deploy.lower.onnx_export import ExportConfig
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.pipeline.artifacts import (
    Artifacts,
    Deployable,
    build_artifacts,
    relative_paths,
    relativize_manifest,
)
from repfx_deploy.pipeline.data import RecipeData, load_data, load_torch_model, pass_context
from repfx_deploy.pipeline.evaluate import EvalData, Evaluation, evaluate, run_all
from repfx_deploy.recipe import Recipe, dump_recipe
from repfx_deploy.targets import get_profile, resolve_threads, resolve_tvm_target

if TYPE_CHECKING:
    from repfx_deploy.measure.rpc.remote import RpcConfig

log = logging.getLogger("repfx_deploy.pipeline")

VERIFY_BATCHES = 8
RANDOM_FIDELITY_SAMPLES = 8


@dataclass(frozen=True)
class CompressRequest:
    model_path: Path
    out_dir: Path
    recipe: Recipe
    load: LoadOptions = LoadOptions()
    target_file: Path | None = None
    force: bool = False
    timing: TimingConfig = TimingConfig()
    compile_tvm: bool = True
    rpc: str | None = None  # tracker HOST:PORT: measure the TVM artifact on a device of the target
    rpc_key: str | None = None  # the device's key there (default: the profile's rpc_key, else its name)


def _samples(loaded: LoadedModel, data: RecipeData) -> list[list[np.ndarray]]:
    """Inputs used to verify artifacts: real calibration batches when given, plus seeded random inputs."""
    samples: list[list[np.ndarray]] = []
    if data.calibration is not None:
        batch = loaded.input_specs[0].shape[0]
        samples += [[b] for b in data.calibration.batches(batch)[:VERIFY_BATCHES]]
    samples += [random_inputs(loaded.input_specs, seed=s) for s in range(2)]
    return samples


def _fidelity_inputs(loaded: LoadedModel, data: RecipeData) -> tuple[list[list[np.ndarray]], str]:
    """Inputs fidelity to the original is measured on: the calibration data, else the eval data, else seeded
    random inputs (said so in the report, as random inputs say little about real behaviour)."""
    batch = loaded.input_specs[0].shape[0]
    for name, ds in (("calibration", data.calibration), ("eval", data.eval)):
        if ds is not None:
            return [[b] for b in ds.batches(batch)], f"{name} data ({ds.source})"
    return [
        random_inputs(loaded.input_specs, seed=100 + s) for s in range(RANDOM_FIDELITY_SAMPLES)
    ], "random inputs (no data given)"


def _summary(stats, artifacts: Artifacts, evaluation: Evaluation, latency: dict, agreement: float | None) -> dict:
    """One side of the report's before/after: counts, size, quality, and each runtime's latency with its source."""
    return {
        "params": stats.params,
        "macs": stats.macs,
        "weights_bytes": stats.size_bytes,
        "size_bytes": artifacts.onnx_path.stat().st_size,
        "accuracy": evaluation.accuracy,
        "agreement": agreement,
        "fidelity": dict(evaluation.fidelity) if evaluation.fidelity is not None else None,
        "latency_ms": {rt: lat.latency_ms for rt, lat in latency.items()},
        "latency": {rt: lat.to_dict() for rt, lat in latency.items()},
    }


def _rpc_config(request: CompressRequest, profile, threads: int) -> RpcConfig | None:
    """The device to measure on, checked before any work: a wrong tracker or key fails in seconds, not after
    the passes and the compile."""
    if request.rpc is None:
        return None
    from repfx_deploy.pipeline.bench_rpc import device_config
    from repfx_deploy.pipeline.latency import check_rpc_target

    if "tvm" not in profile.runtimes or not request.compile_tvm:
        raise InputError(
            f"--rpc measures the TVM artifact on the device, but target {profile.name!r} gets none here.",
            "Drop --rpc, or use a target whose runtimes include tvm.",
        )
    check_rpc_target(profile, ("tvm",))
    return device_config(profile, request.rpc, request.rpc_key, threads)


def _runtimes(profile, art: Artifacts, rpc: RpcConfig | None) -> tuple[str, ...]:
    """The profile's runtimes that have a latency here: all but a TVM that was not built, unless the estimator
    covers it. ``TargetError`` (before any work, from ``source_for``) where a runtime has no source at all."""
    from repfx_deploy.pipeline.latency import source_for

    return tuple(
        rt
        for rt in profile.runtimes
        if rt != "tvm" or art.tvm_dir is not None or source_for(profile, rt, rpc=rpc is not None) == "estimated"
    )


@claims_output  # the output is locked and checked before any work, and stays locked until written
def compress(request: CompressRequest) -> dict:
    """Run the whole job; returns the report (also written to ``out_dir/report.json``)."""
    from repfx_deploy.analyze.torch_stats import torch_stats
    from repfx_deploy.passes.registry import run_passes
    from repfx_deploy.report.writer import write_report

    recipe = request.recipe
    profile = get_profile(recipe.target, request.target_file)
    from repfx_deploy.pipeline.latency import source_for

    for rt in profile.runtimes:  # a target with no way to know its latency is refused before any work
        source_for(profile, rt, rpc=request.rpc is not None)
    started = time.perf_counter()
    loaded = load_torch_model(request.model_path, recipe, request.load, "compress")
    recipe = recipe.with_overrides(input_specs=loaded.input_specs, arch=loaded.arch)
    threads = resolve_threads(profile, recipe.threads)
    rpc = _rpc_config(request, profile, threads)
    from repfx_deploy.measure.runtimes import TorchRunner

    log.info("loaded %s (%s), inputs %s", loaded.path, loaded.format, ", ".join(map(str, loaded.input_specs)))
    data = load_data(recipe, loaded)
    batch = loaded.input_specs[0].shape[0]
    original = loaded.module
    assert original is not None
    baseline_stats = torch_stats(original, loaded.input_specs)
    torch_runner = TorchRunner(original, threads)
    fid_inputs, fid_source = _fidelity_inputs(loaded, data)
    reference = run_all(torch_runner, fid_inputs)

    context = pass_context(loaded, profile, data, reference=original)
    log.info("applying %d pass(es)", len(recipe.passes))
    # passes never change the module they are given, so the original stays the reference
    run = run_passes(original, recipe.passes, context)
    compressed, pass_records, compressed_stats = run.module, run.records, run.stats

    tvm_target = resolve_tvm_target(profile, threads) if request.compile_tvm and "tvm" in profile.runtimes else None
    # Recipe.exporter is a str checked against the Exporter names at load; ExportConfig checks it again
    export_config = ExportConfig(opset=recipe.opset, exporter=recipe.exporter)  # type: ignore[arg-type]
    samples = _samples(loaded, data)
    bench_inputs = samples[0]
    report: dict = {
        "status": "ok",
        "model": {"path": str(loaded.path), "format": loaded.format, "sha256": loaded.sha256, "arch": loaded.arch},
        "inputs": [s.to_dict() for s in loaded.input_specs],
        "target": {**profile.to_dict(), "tvm_target_resolved": tvm_target},
        "threads": threads,
        "passes": pass_records,
        "notes": [],
        "warnings": [],
    }
    if data.calibration is None and data.eval is None:
        report["notes"].append("No calibration or eval data given: fidelity was measured on random inputs only.")
    with atomic_dir(request.out_dir, force=request.force) as tmp:
        build: dict[str, Any] = dict(
            samples=samples,
            export_config=export_config,
            tvm_target=tvm_target,
            tune_trials=recipe.tune_trials,
            threads=threads,
            source_sha256=loaded.sha256,
            link=profile.link,
        )
        art = build_artifacts(compressed, loaded.input_specs, tmp, **build)
        base_art = build_artifacts(original, loaded.input_specs, tmp / "baseline", **build) if pass_records else art
        report["verification"] = list(art.verification)
        _check_int8_artifact(pass_records, art)
        report["warnings"] += _verification_warnings(art.verification)
        if art.tvm_dir is not None and not art.tvm_runs_here:
            how = (
                f"with `repfx-deploy bench model.onnx --target {profile.name} --rpc HOST:PORT` in this folder (or compress "
                "with --rpc)"
                if profile.link == "shared"
                else "once tvm/model.tar is linked into a library there (the command is in tvm/manifest.json)"
            )
            where = (
                f"so it was timed and verified on device {rpc.key!r} over TVM RPC"
                if rpc is not None
                else f"so it was not verified here and its latency is the target's estimate; measure and verify it on the device {how}"
            )
            report["notes"].append(
                f"The TVM artifact is built for {profile.name} ({(tvm_target or {}).get('mtriple')}) and cannot run on this "
                f"machine, {where}. Accuracy and fidelity are of the same model on ONNX Runtime here."
            )
        # paths recorded in the folder are relative to it: it is assembled in a temporary sibling, then renamed
        report["artifacts"] = _artifact_paths(tmp, art)
        for a in {id(art): art, id(base_art): base_art}.values():
            relativize_manifest(a.tvm_dir, tmp)
        report["export"] = relative_paths(art.export, tmp)
        report["compile"] = relative_paths(art.compile, tmp) or None
        if art.compile_error:
            report["status"] = "failed at compile"
            report["error"] = art.compile_error
            write_report(tmp, report, recipe_toml=dump_recipe(recipe))
        else:
            runtimes = _runtimes(profile, art, rpc)
            log.info("latency on %s with %d thread(s): %s", profile.name, threads, ", ".join(runtimes))
            specs = loaded.input_specs
            # the deployed model (ONNX Runtime) against the original (torch); the artifacts were verified when built
            comp = evaluate(
                Deployable(compressed, art.onnx_path, art.tvm_dir, specs),
                profile,
                name="deployed",
                data=EvalData(
                    eval=data.eval,
                    batch_size=batch,
                    inputs=fid_inputs,
                    reference=reference,
                    reference_name="original (torch)",
                    inputs_source=fid_source,
                    timing_inputs=bench_inputs,
                ),
                runtimes=runtimes,
                threads=threads,
                timing=request.timing,
                rpc=rpc,
                quality_runtime="onnxruntime",
                verify=False,
            )
            base = evaluate(
                Deployable(original, base_art.onnx_path, base_art.tvm_dir, specs),
                profile,
                data=EvalData(eval=data.eval, batch_size=batch, timing_inputs=bench_inputs),
                runtimes=runtimes if pass_records else (),
                threads=threads,
                timing=request.timing,
                rpc=rpc,
                quality_runtime="torch",
                verify=False,
            )
            compressed_latency = dict(comp.latency)
            baseline_latency = dict(base.latency) if pass_records else compressed_latency
            report["verification"] += [dict(v) for v in comp.verification]  # the device's outputs, when measured there
            report["notes"] += [n for n in comp.notes if n not in report["notes"]]
            report["baseline"] = _summary(baseline_stats, base_art, base, baseline_latency, agreement=1.0)
            report["compressed"] = _summary(
                compressed_stats,
                art,
                comp,
                compressed_latency,
                agreement=comp.fidelity["top1_agreement"] if comp.fidelity else None,
            )
            if not pass_records:
                report["notes"].append("The recipe has no passes: the compressed model is the baseline, measured once.")
            else:
                report["warnings"] += _not_faster_warnings(baseline_latency, compressed_latency)
            report["elapsed_s"] = round(time.perf_counter() - started, 2)
            write_report(tmp, report, recipe_toml=dump_recipe(recipe))
    if report["status"] != "ok":
        raise CompileError(
            f"TVM could not compile the model; the ONNX artifact and a report were kept in {str(request.out_dir)!r}. {report['error']}",
            "See report.md; compile the ONNX artifact again once the operator is supported, or deploy it with ONNX Runtime.",
        )
    return report


def _check_int8_artifact(pass_records: list[dict], art) -> None:
    """Record, in each quantize pass's stats, which runtimes run the shipped ``model.onnx`` in int8."""
    if any(r["kind"] == "quantize" for r in pass_records):
        from repfx_deploy.passes.quantize.handler import int8_record

        record = int8_record(art.onnx_path, art.export.get("exporter", "?"), checked="model.onnx")
        for r in pass_records:
            if r["kind"] == "quantize":
                r["extras"]["ran_int8"] = record


# Below this speedup a difference is within what repeated runs on a busy machine disagree by.
MIN_SPEEDUP = 1.03


def _not_faster_warnings(baseline: dict, compressed: dict) -> list[str]:
    """One warning per runtime where the compressed model did not run measurably faster than the original
    (``Latency`` values, or records with ``latency_ms``; an estimate is said to be one)."""
    from repfx_deploy.report.phrasing import faster

    warnings = []
    for name, after in compressed.items():
        before = baseline.get(name)
        if before is None:
            continue
        b, a = _ms(before), _ms(after)
        if b / max(a, 1e-9) < MIN_SPEEDUP:
            estimated = " (estimated)" if getattr(after, "source", None) == "estimated" else ""
            warnings.append(
                f"On {name} the compressed model is not faster{estimated}: {a:.4g} ms vs {b:.4g} ms before ({faster(b, a)})."
            )
    return warnings


def _ms(latency) -> float:
    return float(latency["latency_ms"] if isinstance(latency, dict) else latency.latency_ms)


def _verification_warnings(verification: list[dict]) -> list[str]:
    # float32 kernels differ in summation order; beyond these bounds it is no longer rounding.
    return [
        f"{v['candidate']} differs from {v['reference']} by up to {v['max_abs_error']:.3g} (cosine {v['cosine']:.6f})."
        for v in verification
        if v["max_abs_error"] > 1e-3 or v["cosine"] < 0.9999
    ]


def _artifact_paths(folder: Path, art: Artifacts) -> dict:
    """Where each file of the result is, relative to the result folder."""

    def rel(p: Path | None) -> str | None:
        return p.relative_to(folder).as_posix() if p is not None else None

    library = (art.compile.get("manifest") or {}).get("library", "model.so")
    return {
        "onnx": rel(art.onnx_path),
        "tvm_library": rel(art.tvm_dir / library) if art.tvm_dir else None,
        "tvm_manifest": rel(art.tvm_dir / "manifest.json") if art.tvm_dir else None,
        "report_json": "report.json",
        "report_md": "report.md",
        "recipe": "recipe.toml",
    }
