"""ONNX -> TVM Relax -> a shared library that runs with the TVM runtime alone.

Pipeline (each stage is a function so the benchmark and the tuner can stop after it):

1. ``onnx_import.import_onnx``: ``relax.frontend.onnx.from_onnx`` with the weights bound as constants, so the
   library holds them and needs no params file; unsupported operators raise ``CompileError``.
2. ``lower_to_kernels``: canonicalize (constant-fold the shape arithmetic exporters emit), convert
   convolutions to NHWC/HWIO (weights re-laid out at compile time: prepacked, same calling
   convention), legalize and fuse into one PrimFunc per fused kernel.
3. ``schedule_kernels``: apply tuning records from the MetaSchedule database, then the built-in
   default schedule (``tvm_schedule``) to the kernels without records.
4. ``build``: lower the Relax VM code and compile with LLVM; ``export_library`` writes ``model.so``.

Calling convention of the artifact: ``vm = relax.VirtualMachine(tvm.runtime.load_module(so), tvm.cpu())``,
``vm["main"](*inputs)`` with inputs in the manifest's order; it returns one tensor or a tuple.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from repfx_deploy.compile.config import CompileConfig
from repfx_deploy.compile.host import ensure_thread_pool_capacity
from repfx_deploy.compile.link import export_artifact, is_foreign_target
from repfx_deploy.compile.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, write_manifest
from repfx_deploy.compile.onnx_import import (
    import_onnx,
    load_onnx,
    onnx_opset,
    output_specs,
)
from repfx_deploy.digest import file_sha256
from repfx_deploy.diskfull import raise_if_disk_full
from repfx_deploy.errors import CompileError
from repfx_deploy.onnx_signature import graph_input_specs
from repfx_deploy.spec import InputSpec

log = logging.getLogger("repfx_deploy.compile")


@dataclass
class CompiledArtifact:
    """A compiled model: ``library_path`` (``model.so``), ``manifest_path`` and the manifest it holds."""

    library_path: Path
    manifest_path: Path
    manifest: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "library_path": str(self.library_path),
            "manifest_path": str(self.manifest_path),
            "manifest": self.manifest,
        }


@dataclass
class KernelCounts:
    """How each fused kernel (unique PrimFunc) got its schedule."""

    total: int = 0
    from_tuning_db: int = 0  # a MetaSchedule record
    default_schedule: int = 0  # the built-in schedule (includes default_chosen_by_tuning)
    default_chosen_by_tuning: int = 0  # tuned, but the record lost the A/B against the default
    untuned: int = 0  # TVM's plain loops

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _normalize_squeeze_axes(mod):
    """Rewrite ``squeeze`` with negative axes to non-negative ones.

    TVM 0.27's ConvertLayout dies with ``std::bad_alloc`` on a negative squeeze axis (seen on the
    ViT exported by torch 2.13: ``squeeze(x, axis=[-2])``), even when no converted op feeds it.
    """
    from tvm import relax

    from repfx_deploy.compile.relax_rewrite import rewrite_calls

    def normalize(builder, call):
        shape = getattr(call.args[0].ty, "shape", None)
        if call.attrs.axis is None or shape is None:
            return None
        axes = [int(a) for a in call.attrs.axis]
        return relax.op.squeeze(call.args[0], [a % len(shape) for a in axes]) if any(a < 0 for a in axes) else None

    return rewrite_calls(mod, "relax.squeeze", normalize)[0]


def lower_to_kernels(
    mod,
    target,
    conv_layout: str = "NHWC",
    fast_math: bool = True,
    pad_channels: bool = True,
    wide_convs_nchw: bool = True,
):
    """Relax graph -> Relax calling one fused PrimFunc per kernel (legalized, not yet scheduled).

    ``fast_math`` replaces softmax/exp/erf/tanh by TVM's polynomial versions, which vectorize (the
    libm calls do not); softmax got 3x faster on the CIFAR ViT; fast_exp is within 4e-6 relative of exp.
    ``pad_channels`` computes NHWC convolutions at whole-vector output widths (``pad_channels.py``);
    ``wide_convs_nchw`` keeps stride-1 convolutions with long rows in NCHW (``wide_convs.py``).
    Returns ``(module, layout_in_force)``; if ConvertLayout fails the model stays NCHW (logged).
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend import cpu_generic

    from repfx_deploy.compile.tvm_schedule import vector_bits

    with target:
        mod = tvm.transform.Sequential(
            [
                *cpu_generic.library_dispatch_passes(target),
                relax.transform.DecomposeOpsForInference(),
                # folds the shape_of/take/where chains the dynamo exporter writes for attention heads
                relax.transform.CanonicalizeBindings(),
                relax.transform.FoldConstant(),
                relax.transform.DeadCodeElimination(),
            ]
        )(mod)
        if fast_math:
            try:
                mod = relax.transform.FastMathTransform()(mod)
            except Exception as e:  # it assumes every call is to an operator; keep exact math otherwise
                log.warning("fast math not applied: %s", e)
        layout = "NCHW"
        lanes = vector_bits(target) // 32  # float32 lanes
        if conv_layout == "NHWC":
            if wide_convs_nchw:
                from repfx_deploy.compile.wide_convs import legalize_wide_convs

                mod = legalize_wide_convs(mod, lanes)
            try:
                converted = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(
                    _normalize_squeeze_axes(mod)
                )
                # folding turns the weight transposes into HWIO constants: prepacked at compile time
                mod = relax.transform.FoldConstant()(converted)
                layout = "NHWC"
                if pad_channels:
                    from repfx_deploy.compile.pad_channels import (
                        pad_conv_output_channels,
                    )

                    mod = pad_conv_output_channels(mod, lanes)
            except Exception as e:  # a TVM layout-inference bug must not stop the compile
                log.warning("ConvertLayout to NHWC failed (%s); keeping NCHW, kernels will be slower", e)
        mod = tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ]
        )(mod)
    return mod, layout


def _prim_funcs(mod) -> list:
    import tvm

    return [(gv, f) for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def _is_scheduled(func) -> bool:
    return bool(func.attrs is not None and "tirx.is_scheduled" in func.attrs and int(func.attrs["tirx.is_scheduled"]))


def schedule_kernels(mod, target, tuning_db: Path | None = None, default_schedule: bool = True):
    """Give each kernel a schedule: what tuning chose for it in ``tuning_db``, else the default schedule.

    Tuning's choice is a MetaSchedule record or, where the record lost the A/B against it, the default
    schedule (see ``tvm_tune``). Returns ``(module, KernelCounts)``.
    """
    from repfx_deploy.compile import tvm_tune
    from repfx_deploy.compile.tvm_schedule import schedule_func

    counts = KernelCounts(total=len(_prim_funcs(mod)))
    db = None
    choices: dict = {}
    if tuning_db is not None and tvm_tune.database_exists(tuning_db):
        db, choices = tvm_tune.open_database(tuning_db), tvm_tune.read_choices(tuning_db)
    updates = {}
    for gv, func in _prim_funcs(mod):
        if _is_scheduled(func):
            continue
        if db is not None:
            try:
                found = tvm_tune.tuned_schedule(db, choices, tvm_tune.workload(func), target)
            except Exception as e:  # a record that no longer replays (TVM upgrade) must not fail the build
                log.warning("tuning record for %s not applied: %s", gv.name_hint, e)
                found = None
            if found == "default":
                counts.default_chosen_by_tuning += 1
            elif found is not None:
                # the record's function is named "main"; inside the model it must not export a symbol
                updates[gv] = found.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
                counts.from_tuning_db += 1
                continue
        if not default_schedule:
            continue
        try:
            sch = schedule_func(func, target)
        except Exception as e:  # an unusual kernel keeps TVM's plain loops rather than failing the build
            log.debug("default schedule skipped %s: %s", gv.name_hint, e)
            sch = None
        if sch is not None:
            updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            counts.default_schedule += 1
    for gv, func in updates.items():
        mod[gv] = func
    counts.untuned = counts.total - counts.from_tuning_db - counts.default_schedule
    return mod, counts


def build(mod, target):
    """Lower the Relax VM program (memory planning, shape lowering) and compile everything with LLVM."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    # Only the lowering tail of the default CPU pipeline: legalize/fuse already ran, and running
    # FuseOps again could merge kernels whose schedules are fixed.
    tail = tvm.transform.Sequential([*cpu_generic.dataflow_lower_passes(target), *cpu_generic.finalize_passes(target)])
    with target:
        return tvm.compile(mod, target=target, relax_pipeline=tail)


def compile_onnx(
    onnx_path: Path,
    out_dir: Path,
    config: CompileConfig,
    input_specs: tuple[InputSpec, ...] | None = None,
) -> CompiledArtifact:
    """Compile ``onnx_path`` for ``config.target`` into ``out_dir/model.so`` and ``out_dir/manifest.json``.

    ``out_dir`` must exist (the caller makes it atomic). Tunes first when ``config.tune_trials > 0``
    (records go to ``config.tuning_db``); records already in the database are applied either way.
    Weights are constants inside ``model.so``: loading needs only ``tvm.runtime.load_module`` and
    ``relax.VirtualMachine``. Raises ``CompileError`` for operators TVM cannot import or a failed build.
    """
    ensure_thread_pool_capacity()
    import tvm

    started = time.perf_counter()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not out_dir.is_dir():
        raise CompileError(f"Output folder {str(out_dir)!r} does not exist.", "Create it before compiling.")
    model = load_onnx(onnx_path)
    inputs = graph_input_specs(model, input_specs)
    target = tvm.target.Target(config.target_dict)
    log.info("importing %s (opset %d)", onnx_path.name, onnx_opset(model))
    relax_mod = import_onnx(model, inputs)
    try:
        kernels_mod, layout = lower_to_kernels(
            relax_mod, target, config.conv_layout, config.fast_math, config.pad_channels, config.wide_convs_nchw
        )
    except Exception as e:
        raise CompileError(
            f"TVM could not legalize this model: {type(e).__name__}: {e}", "Report the model; try conv_layout='NCHW'."
        ) from e

    from repfx_deploy.compile import tvm_tune

    tune_report = None
    if config.tune_trials > 0 and is_foreign_target(config.target_dict) and config.tune_rpc is None:
        raise CompileError(
            f"Tuning measures kernels on the machine that runs them; {config.target_dict['mtriple']} is not this machine.",
            "Tune on the device over TVM RPC (--rpc HOST:PORT), or compile with tune_trials=0 (the default schedule "
            "and the tuning database still apply).",
        )
    if config.tune_trials > 0:
        tune_report = tvm_tune.tune_kernels(kernels_mod, target, config)
    try:
        scheduled, counts = schedule_kernels(kernels_mod, target, config.tuning_db, config.default_schedule)
        log.info("kernels: %s", counts.to_dict())
        executable = build(scheduled, target)
        library_path, link_info = export_artifact(executable, out_dir, config.target_dict, config.link)
    except CompileError:
        raise
    except Exception as e:
        raise_if_disk_full(e, out_dir)  # writing the library on a full disk is no build failure
        raise CompileError(
            f"TVM failed to build the model: {type(e).__name__}: {e}",
            "Try conv_layout='NCHW' or default_schedule=False, and report the model.",
        ) from e

    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "library": library_path.name,
        "link": link_info,
        "tvm_version": tvm.__version__,
        "target": config.target_dict,
        "target_hash": config.target_hash,
        "source_onnx": {
            "file": onnx_path.name,  # a name, not a path: the caller may compile inside a temporary folder
            "sha256": file_sha256(onnx_path),
            "opset": onnx_opset(model),
        },
        "inputs": [s.to_dict() for s in inputs],
        "outputs": output_specs(scheduled, model),
        "calling_convention": {
            "entry": "main",
            "params": "embedded",  # weights are constants in model.so; there is no params file
            "weights_prepacked": layout == "NHWC",  # HWIO at compile time, no transform_params call
            "transform_params": False,
            "returns": "tensor or tuple of tensors, in the manifest's output order",
        },
        "conv_layout": layout,
        "fast_math": config.fast_math,
        # flat summary (what reports show): tuned = the tuning database decided the kernel's schedule
        # (a MetaSchedule record, or the default where it won the A/B), default_schedule = built-in
        # schedule (tuned or not), untuned = TVM's plain loops
        "tune_trials": tune_report.trials_run if tune_report is not None else 0,
        "kernels_tuned": counts.from_tuning_db + counts.default_chosen_by_tuning,
        "kernels_default_schedule": counts.default_schedule,
        "kernels_untuned": counts.untuned,
        "kernels": counts.to_dict(),
        "tuning": {
            "db": str(config.tuning_db),
            "trials_requested": config.tune_trials,
            **(tune_report.to_dict() if tune_report is not None else {"trials_run": 0}),
        },
        "compile_s": round(time.perf_counter() - started, 3),
    }
    manifest_path = out_dir / MANIFEST_NAME
    write_manifest(manifest_path, manifest)
    return CompiledArtifact(library_path=library_path, manifest_path=manifest_path, manifest=manifest)
