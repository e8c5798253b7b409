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

import numpy as np

from repfx_deploy.atomic import atomic_dir, check_output
from repfx_deploy.data.tensors import random_inputs
from repfx_deploy.errors import CompileError, InputError
from repfx_deploy.ingest.loader import LoadedModel, LoadOptions, load_model
from repfx_deploy.lower.onnx_export import ExportConfig
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.pipeline.artifacts import (
    Artifacts,
    build_artifacts,
    relocate,
    relocate_manifest,
)
from repfx_deploy.pipeline.data import RecipeData, load_data
from repfx_deploy.pipeline.evaluate import fidelity, predictions, run_all, top1_accuracy
from repfx_deploy.recipe import Recipe, dump_recipe
from repfx_deploy.targets import (
    TargetProfile,
    get_profile,
    resolve_threads,
    resolve_tvm_target,
)

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


def _samples(loaded: LoadedModel, data: RecipeData) -> list[list[np.ndarray]]:
    """Inputs used to verify artifacts: real calibration batches when given, plus seeded random inputs."""
    samples: list[list[np.ndarray]] = []
    if data.calibration is not None:
        batch = loaded.input_specs[0].shape[0]
        samples += [[b] for b in data.calibration.batches(batch)[:VERIFY_BATCHES]]
    samples += [random_inputs(loaded.input_specs, seed=s) for s in range(2)]
    return samples


def _bench(artifacts: Artifacts, module, profile: TargetProfile, inputs: list[np.ndarray], threads: int, timing: TimingConfig) -> dict:
    from repfx_deploy.measure.bench import bench_runners
    from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner

    runners = []
    if "torch" in profile.runtimes:
        runners.append(TorchRunner(module, threads))
    if "onnxruntime" in profile.runtimes:
        runners.append(OrtRunner(artifacts.onnx_path, threads))
    if "tvm" in profile.runtimes and artifacts.tvm_dir is not None and artifacts.tvm_runs_here:
        from repfx_deploy.compile.tvm_runtime import load_tvm_runner

        runners.append(load_tvm_runner(artifacts.tvm_dir, threads))
    return bench_runners(runners, inputs, timing)


def _fidelity_inputs(loaded: LoadedModel, data: RecipeData) -> tuple[list[list[np.ndarray]], str]:
    """Inputs fidelity to the original is measured on: the calibration data, else the eval data, else seeded
    random inputs (said so in the report, as random inputs say little about real behaviour)."""
    batch = loaded.input_specs[0].shape[0]
    for name, ds in (("calibration", data.calibration), ("eval", data.eval)):
        if ds is not None:
            return [[b] for b in ds.batches(batch)], f"{name} data ({ds.source})"
    return [random_inputs(loaded.input_specs, seed=100 + s) for s in range(RANDOM_FIDELITY_SAMPLES)], "random inputs (no data given)"


def _quality(artifacts: Artifacts, data: RecipeData, batch: int, threads: int, fid_inputs: list, reference: list, fid_source: str) -> dict:
    """Accuracy on eval data and fidelity to the original, both of the deployed ONNX model."""
    from repfx_deploy.measure.runtimes import OrtRunner

    ort = OrtRunner(artifacts.onnx_path, threads)
    out: dict = {"accuracy": None}
    if data.eval is not None and data.eval.labeled:
        out["accuracy"] = top1_accuracy(predictions(ort, data.eval, batch), data.eval, batch)
    fid = fidelity(reference, run_all(ort, fid_inputs), reference_name="original (torch)", candidate_name="deployed (onnxruntime)")
    out["fidelity"] = {**fid, "data": fid_source}
    out["agreement"] = fid["top1_agreement"]
    return out


def _summary(stats, artifacts: Artifacts, latency: dict, quality: dict) -> dict:
    return {
        "params": stats.params,
        "macs": stats.macs,
        "weights_bytes": stats.size_bytes,
        "size_bytes": artifacts.onnx_path.stat().st_size,
        "accuracy": quality["accuracy"],
        "agreement": quality["agreement"],
        "fidelity": quality["fidelity"],
        "latency_ms": {name: r["latency_ms"] for name, r in latency.items()},
        "latency": latency,
    }


def compress(request: CompressRequest) -> dict:
    """Run the whole job; returns the report (also written to ``out_dir/report.json``)."""
    from repfx_deploy.analyze.torch_stats import torch_stats
    from repfx_deploy.passes.protocol import PassContext
    from repfx_deploy.passes.registry import run_passes
    from repfx_deploy.report.writer import write_report

    check_output(request.out_dir, force=request.force)
    recipe = request.recipe
    profile = get_profile(recipe.target, request.target_file)
    started = time.perf_counter()
    loaded = load_model(request.model_path, LoadOptions(
        arch=request.load.arch or recipe.arch,
        python_path=request.load.python_path,
        trust_pickle=request.load.trust_pickle,
        input_specs=recipe.input_specs or request.load.input_specs,
    ))
    if not loaded.is_torch:
        raise InputError(
            f"compress needs a PyTorch model, but {str(request.model_path)!r} is {loaded.format}.",
            "Pass the trained PyTorch model (a state_dict with --arch, a .pt2 or TorchScript); use `compile`/`bench` for ONNX files.",
        )
    recipe = recipe.with_overrides(input_specs=loaded.input_specs, arch=loaded.arch)
    threads = resolve_threads(profile, recipe.threads)
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
    baseline_accuracy = None
    if data.eval is not None and data.eval.labeled:
        baseline_accuracy = top1_accuracy(predictions(torch_runner, data.eval, batch), data.eval, batch)

    context = PassContext(input_specs=loaded.input_specs, profile=profile, calibration=data.calibration, train=data.train,
                          reference=original, artifact_checks=True)
    log.info("applying %d pass(es)", len(recipe.passes))
    # passes never change the module they are given, so the original stays the reference
    run = run_passes(original, recipe.passes, context)
    compressed, pass_records, compressed_stats = run.module, run.records, run.stats

    tvm_target = resolve_tvm_target(profile, threads) if request.compile_tvm and "tvm" in profile.runtimes else None
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
        build = dict(samples=samples, export_config=export_config, tvm_target=tvm_target,
                     tune_trials=recipe.tune_trials, threads=threads, source_sha256=loaded.sha256, link=profile.link)
        art = build_artifacts(compressed, loaded.input_specs, tmp, **build)
        base_art = build_artifacts(original, loaded.input_specs, tmp / "baseline", **build) if pass_records else art
        report["verification"] = art.verification
        _check_int8_artifact(pass_records, art)
        report["warnings"] += _verification_warnings(art.verification)
        if art.tvm_dir is not None and not art.tvm_runs_here:
            report["notes"].append(
                f"The TVM artifact is built for {profile.name} ({(tvm_target or {}).get('mtriple')}) and cannot run on this "
                "machine, so it was neither verified against ONNX Runtime nor timed here; measure and verify it on the "
                f"device over TVM RPC with `repfx-deploy bench {request.out_dir}/model.onnx --target {profile.name} "
                "--rpc HOST:PORT`. Accuracy and fidelity are of the same model on ONNX Runtime here."
            )
        report["artifacts"] = _artifact_paths(request.out_dir, tmp, art)
        for a in {id(art): art, id(base_art): base_art}.values():
            relocate_manifest(a.tvm_dir, tmp, request.out_dir)
        report["export"] = relocate(art.export, tmp, request.out_dir)
        report["compile"] = relocate(art.compile, tmp, request.out_dir) or None
        if art.compile_error:
            report["status"] = "failed at compile"
            report["error"] = art.compile_error
            write_report(tmp, report, recipe_toml=dump_recipe(recipe))
        else:
            log.info("measuring latency on %s with %d thread(s)", ", ".join(profile.runtimes), threads)
            compressed_latency = _bench(art, compressed, profile, bench_inputs, threads, request.timing)
            baseline_latency = (
                _bench(base_art, original, profile, bench_inputs, threads, request.timing) if pass_records else compressed_latency
            )
            log.info("scoring accuracy and fidelity")
            quality = _quality(art, data, batch, threads, fid_inputs, reference, fid_source)
            report["baseline"] = _summary(
                baseline_stats, base_art, baseline_latency,
                {"accuracy": baseline_accuracy, "agreement": 1.0, "fidelity": None},
            )
            report["compressed"] = _summary(compressed_stats, art, compressed_latency, quality)
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
    """One warning per runtime where the compressed model did not run measurably faster than the original."""
    warnings = []
    for name, after in compressed.items():
        before = baseline.get(name)
        if before is None:
            continue
        speedup = before["latency_ms"] / max(after["latency_ms"], 1e-9)
        if speedup < MIN_SPEEDUP:
            warnings.append(
                f"On {name} the compressed model is not faster: {after['latency_ms']:.4g} ms vs {before['latency_ms']:.4g} ms "
                f"before ({speedup:.2f}x)."
            )
    return warnings


def _verification_warnings(verification: list[dict]) -> list[str]:
    # float32 kernels differ in summation order; beyond these bounds it is no longer rounding.
    return [
        f"{v['candidate']} differs from {v['reference']} by up to {v['max_abs_error']:.3g} (cosine {v['cosine']:.6f})."
        for v in verification
        if v["max_abs_error"] > 1e-3 or v["cosine"] < 0.9999
    ]


def _artifact_paths(final: Path, tmp: Path, art: Artifacts) -> dict:
    def rel(p: Path | None) -> str | None:
        return str(final / p.relative_to(tmp)) if p is not None else None

    library = (art.compile.get("manifest") or {}).get("library", "model.so")
    return {
        "onnx": rel(art.onnx_path),
        "tvm_library": rel(art.tvm_dir / library) if art.tvm_dir else None,
        "tvm_manifest": rel(art.tvm_dir / "manifest.json") if art.tvm_dir else None,
        "report_json": str(final / "report.json"),
        "report_md": str(final / "report.md"),
        "recipe": str(final / "recipe.toml"),
    }
