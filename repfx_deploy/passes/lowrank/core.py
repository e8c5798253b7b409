"""The lowrank pass without recipe parsing: find layers, choose ranks, factorize.

    from repfx_deploy.passes.lowrank import LowRankConfig, lowrank
    result = lowrank(model, specs, LowRankConfig(params_ratio=0.5))   # a copy; ``model`` is untouched
    result.module, result.stats

or step by step (what the trained-rank mode does, fine-tuning ``prepared.work`` between the steps):
``prepare`` -> ``choose_ranks`` -> ``apply``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from repfx_deploy.data.tensors import zeros_for
from repfx_deploy.errors import PassError
from repfx_deploy.passes.lowrank.config import LowRankConfig
from repfx_deploy.passes.lowrank.factorize import (
    LayerShape,
    Scheme,
    factorize,
    singular_values,
)
from repfx_deploy.passes.lowrank.layers import find_layers, set_submodule
from repfx_deploy.passes.lowrank.ranks import (
    Option,
    allocate,
    dense_option,
    energy_options,
    energy_rank,
)
from repfx_deploy.passes.prune.graph import matches
from repfx_deploy.passes.prune.torch_layers import make_traceable

log = logging.getLogger("repfx_deploy.passes.lowrank")


@dataclass
class Prepared:
    """A working copy of the model (attention unfused) and its factorizable layers with the schemes allowed."""

    work: nn.Module
    layers: dict[str, tuple[LayerShape, tuple[Scheme, ...]]]
    unfused: list[str] = field(default_factory=list)

    def default_schemes(self) -> dict[str, Scheme]:
        return {name: schemes[0] for name, (_, schemes) in self.layers.items()}


@dataclass(frozen=True)
class LowRankResult:
    module: nn.Module
    stats: dict


def prepare(model: nn.Module, specs, config: LowRankConfig) -> Prepared:
    """Copy ``model``, unfuse its attention (if configured: ``prune.torch_layers.make_traceable``, shared with the
    prune pass) and list the layers that may be factorized."""
    work = copy.deepcopy(model).eval()
    # torch's fused attention reads its projection weights directly: swap in stand-ins with plain linears
    unfused = make_traceable(work) if config.unfuse_attention else []
    shapes = find_layers(work, tuple(zeros_for(specs)), config.ignore)
    layers = {name: (shape, _schemes(shape, config)) for name, shape in shapes.items()}
    return Prepared(work, layers, unfused)


def _schemes(shape: LayerShape, config: LowRankConfig) -> tuple[Scheme, ...]:
    allowed = shape.schemes()
    if config.conv_scheme == "auto" or shape.kind == "linear":
        return allowed
    return (config.conv_scheme,) if config.conv_scheme in allowed else ("channel",)


def _pinned(name: str, config: LowRankConfig) -> int | str | None:
    for pattern, rank in config.layer_ranks:
        if matches(name, (pattern,)):
            return rank
    return None


def choose_ranks(prepared: Prepared, specs, config: LowRankConfig, calibration=None) -> tuple[dict[str, Option], dict]:
    """One option per layer (dense or a scheme and rank) and a record of how they were chosen."""
    chosen: dict[str, Option] = {}
    free: dict[str, tuple[LayerShape, tuple[Scheme, ...]]] = {}
    notes: list[str] = []
    spectra = {name: {s: singular_values(prepared.work.get_submodule(name).weight, s) for s in schemes}
               for name, (_, schemes) in prepared.layers.items()}
    for name, (shape, schemes) in prepared.layers.items():
        pin = _pinned(name, config)
        if pin is None:
            free[name] = (shape, schemes)
        elif pin == "dense":
            chosen[name] = dense_option(shape)
        else:
            chosen[name] = _at_rank(shape, schemes, int(pin), spectra[name])
            if chosen[name].scheme is None:
                notes.append(f"{name}: rank {pin} would not make it cheaper; left dense")
    record: dict = {"mode": "layer_ranks" if config.budget is None and config.energy is None else None, "notes": notes}
    if config.energy is not None:
        record["mode"] = "energy"
        for name, (shape, schemes) in free.items():
            r = {s: _round_up(energy_rank(spectra[name][s], config.energy), config.round_to) for s in schemes}
            opts = [_at_rank(shape, (s,), r[s], spectra[name]) for s in schemes]
            chosen[name] = min(opts, key=lambda o: (o.params, o.macs))
    elif config.budget is not None:
        kind, ratio = config.budget
        record["mode"] = f"{kind}_ratio ({config.criterion})"
        total = _model_total(prepared.work, specs, kind)
        pinned_saving = sum(prepared.layers[n][0].dense_params() - o.params if kind == "params" else prepared.layers[n][0].dense_macs() - o.macs
                            for n, o in chosen.items())
        must_save = int(np.ceil(total * (1.0 - ratio))) - pinned_saving
        if config.criterion == "sensitivity":
            from repfx_deploy.passes.lowrank.sensitivity import measured_options

            if len(specs) != 1:
                raise PassError("lowrank: criterion = \"sensitivity\" runs the model on calibration samples, which feed one input only.",
                                "Use criterion = \"energy\" for a model with several inputs.")

            batches = _calibration_batches(calibration, config)
            options = measured_options(prepared.work, free, batches, round_to=config.round_to, points=config.sensitivity_points)
            record["sensitivity"] = {n: [[o.scheme, o.rank, round(o.loss, 6)] for o in opts[1:]] for n, opts in options.items()}
        else:
            options = {n: energy_options(shape, {s: spectra[n][s] for s in schemes}, config.round_to) for n, (shape, schemes) in free.items()}
        try:
            chosen |= allocate(options, kind, must_save)
        except ValueError as e:
            raise PassError(
                f"lowrank: {kind}_ratio = {ratio} cannot be reached by factorizing ({e}).",
                f"Ask for a larger {kind}_ratio, lower round_to, or stop ignoring layers.",
            ) from e
        record |= {"budget_kind": kind, "budget_ratio": ratio, "total_before": total}
    else:
        chosen |= {name: dense_option(shape) for name, (shape, _) in free.items()}
    record["energy_kept"] = {n: _energy_kept(spectra[n], o) for n, o in chosen.items() if o.scheme is not None}
    return {n: chosen[n] for n in prepared.layers}, record


def _round_up(r: int, to: int) -> int:
    return -(-r // to) * to


def _at_rank(shape: LayerShape, schemes: tuple[Scheme, ...], rank: int, spectra: dict) -> Option:
    """The cheapest scheme at ``rank`` that makes the layer cheaper, or dense."""
    best = dense_option(shape)
    for s in schemes:
        if rank <= shape.max_useful_rank(s):
            lost = float((spectra[s][rank:].double() ** 2).sum() / max(float((spectra[s].double() ** 2).sum()), 1e-30))
            o = Option(s, rank, shape.params(s, rank), shape.macs(s, rank), lost)
            if best.scheme is None or o.params < best.params:
                best = o
    return best


def _energy_kept(spectra: dict, option: Option) -> float:
    sq = spectra[option.scheme].double() ** 2
    return round(float(sq[: option.rank].sum() / max(float(sq.sum()), 1e-30)), 6)


def _model_total(model: nn.Module, specs, kind: str) -> int:
    from repfx_deploy.analyze.torch_stats import param_count, torch_stats

    if kind == "params":
        return param_count(model)
    return torch_stats(model, specs).macs


def _calibration_batches(calibration, config: LowRankConfig) -> list[torch.Tensor]:
    if calibration is None or len(calibration) == 0:
        raise PassError("lowrank: criterion = \"sensitivity\" measures each layer on calibration data, and none was given.",
                        "Set [data] calibration in the recipe (or --calibration), or use criterion = \"energy\".")
    order = np.random.default_rng(0).permutation(len(calibration))  # data sets are often stored ordered by class
    n = min(config.sensitivity_batches * config.sensitivity_batch_size, len(calibration))
    x = torch.from_numpy(np.ascontiguousarray(calibration.x[np.sort(order[:n])]))
    return list(x.split(config.sensitivity_batch_size))


def apply(model: nn.Module, chosen: dict[str, Option]) -> list[dict]:
    """Factorize ``model``'s layers in place as ``chosen`` says; returns one record per layer."""
    out = []
    for name, o in chosen.items():
        layer = model.get_submodule(name)
        rec = {"layer": name, "scheme": o.scheme or "dense", "rank": o.rank or None, "params": o.params, "macs": o.macs}
        if o.scheme is not None:
            set_submodule(model, name, factorize(layer, o.scheme, o.rank))
        out.append(rec)
    return out


def lowrank(model: nn.Module, specs, config: LowRankConfig, calibration=None) -> LowRankResult:
    """A factorized copy of ``model`` (input signature ``specs``) and its stats; ``model`` itself is unchanged."""
    prepared = prepare(model, specs, config)
    chosen, record = choose_ranks(prepared, specs, config, calibration)
    layers = apply(prepared.work, chosen)
    return LowRankResult(prepared.work, summarize(prepared, layers, record))


def summarize(prepared: Prepared, layers: list[dict], record: dict) -> dict:
    factorized = [r for r in layers if r["scheme"] != "dense"]
    for r in factorized:
        r["energy_kept"] = record["energy_kept"].get(r["layer"])
    return {
        "mode": record["mode"],
        **{k: v for k, v in record.items() if k not in ("mode", "energy_kept")},
        "unfused_attention": prepared.unfused,
        "candidates": len(layers),
        "factorized": len(factorized),
        "layers": layers,
    }
