"""``estimate_latency``: a labeled latency estimate for a model on a device profile, without the device.

Two methods (nn-Meter's split: find the kernels the runtime runs, then cost each one):

- ``"lookup table"`` (host only): the layers ONNX Runtime executes after its own fusions, each timed standalone
  on this machine once and cached by signature (``lut.py``); the whole-model figure is their sum corrected by
  the profile's fitted ``lut_*`` values (per-call overhead, cold weights).
- ``"analytic model"`` (any profile): ``analytic.py``'s roofline-with-overhead cost per layer, with the
  profile's per-device parameters.

Every result says it is an estimate, which method and runtime it stands for, and the profile's stated accuracy.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from repfx_deploy.errors import InputError, TargetError
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import (
    EstimatorMethod,
    EstimatorParams,
    TargetProfile,
    get_profile,
)

if TYPE_CHECKING:
    import onnx
    import torch.nn as nn

    from repfx_deploy.estimate.lut import LatencyTable

ModelSource = Union["nn.Module", Path, str, "onnx.ModelProto"]

# Open tables by (threads, cache root): a search calling estimate_latency in a loop reads the file once.
_TABLES: dict[tuple[int, str], LatencyTable] = {}


@dataclass(frozen=True)
class LayerEstimate:
    """One layer's share of the estimate. ``measured_ms`` is the layer's fastest standalone call (lookup table only)."""

    name: str
    op_type: str
    latency_ms: float
    op_class: str = ""
    macs: int = 0
    bytes_moved: int = 0
    signature: str = ""
    measured_ms: float | None = None
    fused_into: str = ""

    def to_dict(self) -> dict:
        d = {"name": self.name, "op_type": self.op_type, "latency_ms": round(self.latency_ms, 6)}
        for key in ("op_class", "macs", "bytes_moved", "signature", "fused_into"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        if self.measured_ms is not None:
            d["measured_ms"] = round(self.measured_ms, 6)
        return d


@dataclass(frozen=True)
class Estimate:
    """A predicted latency, never a measurement: ``is_estimate`` is always true.

    ``latency_ms`` is the layers' sum plus ``overhead_ms``, the runtime's once-per-call cost outside any layer.
    """

    latency_ms: float
    method: EstimatorMethod
    runtime: str
    target: str
    accuracy: str
    accuracy_pct: float
    calibrated_on: str
    threads: int
    layers: tuple[LayerEstimate, ...]
    layers_measured: int = 0
    overhead_ms: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    is_estimate: bool = True

    def to_dict(self) -> dict:
        return {
            "latency_ms": round(self.latency_ms, 6),
            "is_estimate": True,
            "method": self.method,
            "runtime": self.runtime,
            "target": self.target,
            "accuracy": self.accuracy,
            "accuracy_pct": self.accuracy_pct,
            "calibrated_on": self.calibrated_on,
            "threads": self.threads,
            "layers_measured": self.layers_measured,
            "overhead_ms": round(self.overhead_ms, 6),
            "notes": list(self.notes),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def estimate_latency(
    model: ModelSource,
    input_specs: tuple[InputSpec, ...] = (),
    profile: TargetProfile | str = "host",
    *,
    method: EstimatorMethod | None = None,
    threads: int = 0,
    cache_root: Path | None = None,
) -> Estimate:
    """Estimate batch latency of ``model`` (an ``nn.Module``, ``.onnx`` path or ``onnx.ModelProto``) on ``profile``.

    ``input_specs`` are required for a module and pin dynamic dimensions of an ONNX graph. ``method`` defaults to
    the profile's. The lookup table needs the profile to be this machine (``host``); it measures only layers it
    has not seen (cached under ``cache_root``, default ``$REPFX_CACHE``). Raises ``TargetError`` for a profile
    without ``[estimator]`` parameters or a lookup table asked of another device, ``InputShapeError`` for
    missing shapes.
    """
    if isinstance(profile, str):
        profile = get_profile(profile)
    params = profile.estimator
    if params is None:
        raise TargetError(
            f"Target {profile.name!r} has no [estimator] table, so there is nothing to estimate its latency with.",
            "Add an [estimator] table to its profile (see targets/rpi4.toml), or measure on the device.",
        )
    method = method or params.method
    if method not in ("lookup table", "analytic model"):
        raise InputError(f"Unknown estimation method {method!r}.", "Use 'lookup table' or 'analytic model'.")
    if method == "lookup table" and not profile.is_host:
        raise TargetError(
            f"A lookup table measures layers on this machine, so it cannot predict {profile.name!r}.",
            "Use --method analytic for a device that is not this machine.",
        )
    onnx_model, specs = prepare_onnx(model, tuple(input_specs))
    notes = []
    if method != params.method:
        notes.append(f"the stated accuracy is for this profile's {params.method}, not the {method} used here")
    if method == "lookup table":
        return _lookup_estimate(onnx_model, specs, profile, params, threads, cache_root, tuple(notes))
    return _analytic_estimate(onnx_model, profile, params, tuple(notes))


def prepare_onnx(model: ModelSource, specs: tuple[InputSpec, ...]) -> tuple[onnx.ModelProto, tuple[InputSpec, ...]]:
    """The model as an ONNX graph with static input shapes and inferred tensor shapes, and its input specs."""
    import onnx

    from repfx_deploy.onnx_signature import graph_input_specs

    if isinstance(model, (str, Path)):
        from repfx_deploy.errors import ModelLoadError

        try:
            proto = onnx.load(str(model))
        except Exception as e:
            raise ModelLoadError(
                f"Cannot read {str(model)!r} as ONNX: {e}", "Give an .onnx file or a PyTorch model."
            ) from e
    elif isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        proto = _export(model, specs)
    specs = graph_input_specs(proto, specs)
    by_name = {s.name: s for s in specs}
    for value in proto.graph.input:
        if value.name in by_name:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, by_name[value.name].shape):
                dim.Clear()
                dim.dim_value = size
    return onnx.shape_inference.infer_shapes(proto), specs


def _export(module: nn.Module, specs: tuple[InputSpec, ...]) -> onnx.ModelProto:
    import onnx

    from repfx_deploy.errors import InputShapeError
    from repfx_deploy.lower.onnx_export import export_onnx

    if not specs:
        raise InputShapeError(
            "Estimating a PyTorch module needs its input shapes.", "Pass input_specs (--input-shape 1,3,32,32)."
        )
    with tempfile.TemporaryDirectory(prefix="repfx-estimate-") as tmp:
        path = export_onnx(module, specs, Path(tmp) / "model.onnx").path
        return onnx.load(str(path))


def _table(threads: int, cache_root: Path | None) -> LatencyTable:
    from repfx_deploy.estimate.lut import LatencyTable
    from repfx_deploy.estimate.lut import cache_root as default_root

    root = cache_root or default_root()
    key = (threads, str(root))
    if key not in _TABLES:
        _TABLES[key] = LatencyTable.open(threads, root)
    return _TABLES[key]


def _lookup_estimate(onnx_model, specs, profile, params: EstimatorParams, threads, cache_root, notes) -> Estimate:
    from repfx_deploy.estimate.lut import (
        RUNTIME,
        cold_weight_bytes,
        l2_cache_bytes,
        runtime_version,
    )
    from repfx_deploy.estimate.ort_layers import ort_graph
    from repfx_deploy.targets import resolve_threads

    threads = resolve_threads(profile, threads)
    graph = ort_graph(onnx_model, specs, threads)
    table = _table(threads, cache_root)
    before = table.measured
    cold = cold_weight_bytes(graph.layers, l2_cache_bytes())
    try:
        layers = []
        for layer, cold_bytes in zip(graph.layers, cold):
            raw = table.latency_ms(graph, layer)
            layers.append(
                LayerEstimate(
                    name=layer.name,
                    op_type=f"{layer.domain + '.' if layer.domain else ''}{layer.op_type}",
                    latency_ms=corrected_ms(raw, params, cold_bytes),
                    signature=layer.signature,
                    measured_ms=raw,
                )
            )
    finally:
        table.save()  # what was measured before a failure is kept
    return Estimate(
        latency_ms=sum(layer.latency_ms for layer in layers) + params.lut_run_overhead_us * 1e-3,
        method="lookup table",
        runtime=f"{RUNTIME} {runtime_version()}",
        target=profile.name,
        accuracy=params.accuracy,
        accuracy_pct=params.accuracy_pct,
        calibrated_on=params.calibrated_on,
        threads=threads,
        layers=tuple(layers),
        layers_measured=table.measured - before,
        overhead_ms=params.lut_run_overhead_us * 1e-3,
        notes=notes + (f"per-layer figures measured standalone on this machine, cached in {table.path}",),
    )


def corrected_ms(raw_ms: float, params: EstimatorParams, cold_weight_bytes: int = 0) -> float:
    """A standalone layer measurement turned into its in-graph share (see ``EstimatorParams``);
    ``cold_weight_bytes`` are the weights it reads cold in the graph (``lut.cold_weight_bytes``)."""
    cold_ms = cold_weight_bytes / (params.lut_weight_gbs * 1e6) if params.lut_weight_gbs > 0 else 0.0
    return max(0.0, params.lut_scale * raw_ms + params.lut_node_offset_us * 1e-3) + cold_ms


def _analytic_estimate(onnx_model, profile: TargetProfile, params: EstimatorParams, notes) -> Estimate:
    from repfx_deploy.estimate.analytic import layer_costs, layer_latency_ms

    layers = tuple(
        LayerEstimate(
            name=c.name,
            op_type=c.op_type,
            latency_ms=layer_latency_ms(c, params),
            op_class=c.op_class,
            macs=c.macs,
            bytes_moved=c.bytes_moved,
            fused_into=c.fused_into,
        )
        for c in layer_costs(onnx_model, params.fuse_elementwise)
    )
    return Estimate(
        latency_ms=sum(layer.latency_ms for layer in layers),
        method="analytic model",
        runtime=params.runtime,
        target=profile.name,
        accuracy=params.accuracy,
        accuracy_pct=params.accuracy_pct,
        calibrated_on=params.calibrated_on,
        threads=profile.threads,
        layers=layers,
        notes=notes,
    )
