"""The lowrank pass's machinery below the protocol: the candidate layers of a model with their SVDs, the option
the config's criterion picks for each (the space's default), the choices a site offers, and installing options.

A choice (what the space and ``ranks`` hold) is ``"dense"``, an integer rank of the layer's first scheme, or
``"<scheme>:<rank>"`` for its other scheme (only ``conv_scheme = "auto"`` gives a conv two); ``to_choice`` and
``to_option`` convert between choices and ``ranks.Option`` (scheme + rank + costs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes.lowrank.config import DENSE, LowRankConfig, RankValue, parse_rank
from repfx_deploy.passes.lowrank.factorize import Decomposition, LayerShape, Scheme, decompose, factorize, layer_weight
from repfx_deploy.passes.lowrank.layers import find_layers, matches, set_submodule
from repfx_deploy.passes.lowrank.ranks import (
    Option,
    allocate,
    candidate_ranks,
    dense_option,
    energy_options,
    energy_rank,
)
from repfx_deploy.passes.protocol import Choice, kept_choices

if TYPE_CHECKING:
    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.spec import InputSpec

log = logging.getLogger("repfx_deploy.passes.lowrank")

# How many ranks a site offers per scheme (evenly thinned): enough to search, few enough to search quickly.
RANK_STEPS = 12
RANK_STEPS_TWO_SCHEMES = 8


@dataclass(frozen=True)
class Candidate:
    """One layer that may be factorized: its cost shape, the schemes the config allows for it (the first is the
    one an integer choice means) and each scheme's SVD, kept up to the largest useful rank."""

    shape: LayerShape
    schemes: tuple[Scheme, ...]
    svds: dict[Scheme, Decomposition]

    def useful(self, scheme: Scheme) -> int:
        return self.shape.max_useful_rank(scheme)

    def energy_lost(self, scheme: Scheme, rank: int) -> float:
        sq = self.svds[scheme].s.double() ** 2
        return float(sq[rank:].sum() / max(float(sq.sum()), 1e-30))

    def option(self, scheme: Scheme, rank: int) -> Option:
        """``scheme`` at ``rank``, or dense when that pair would not be cheaper than the layer."""
        if not 1 <= rank <= self.useful(scheme):
            return dense_option(self.shape)
        return Option(
            scheme, rank, self.shape.params(scheme, rank), self.shape.macs(scheme, rank), self.energy_lost(scheme, rank)
        )


def allowed_schemes(shape: LayerShape, config: LowRankConfig) -> tuple[Scheme, ...]:
    allowed = shape.schemes()
    if config.conv_scheme == "auto" or shape.kind == "linear":
        return allowed
    return (config.conv_scheme,) if config.conv_scheme in allowed else ("channel",)


def find_candidates(work: nn.Module, example: tuple[torch.Tensor, ...], config: LowRankConfig) -> dict[str, Candidate]:
    """Every factorizable layer of ``work`` that ``config.ignore`` leaves, each with its SVDs (computed once
    here: ``apply_assignment`` only truncates them)."""
    out = {}
    for name, shape in find_layers(work, example, config.ignore).items():
        schemes = allowed_schemes(shape, config)
        weight = layer_weight(work.get_submodule(name))
        out[name] = Candidate(shape, schemes, {s: decompose(weight, s, shape.max_useful_rank(s)) for s in schemes})
    return out


def to_choice(cand: Candidate, scheme: Scheme | None, rank: int = 0) -> Choice:
    """How the space spells ``scheme`` at ``rank`` for ``cand`` (``scheme`` None: dense)."""
    if scheme is None:
        return DENSE
    return rank if scheme == cand.schemes[0] else f"{scheme}:{rank}"


def to_option(name: str, cand: Candidate, value: RankValue, *, cheapest: bool = False) -> Option:
    """The option a rank value names for layer ``name``. An integer is a rank of the first scheme, or with
    ``cheapest`` (``layer_ranks``' meaning) of whichever allowed scheme is cheapest at that rank; a rank that
    would not make the layer cheaper gives dense. ``RecipeError`` for a scheme the layer does not allow."""
    parsed = parse_rank(value)
    if parsed is None:
        return dense_option(cand.shape)
    scheme, rank = parsed
    if scheme is not None and scheme not in cand.schemes:
        raise RecipeError(
            f"lowrank: {name!r} cannot take {value!r}: its schemes are {', '.join(cand.schemes)}.",
            f'Use an integer rank, "dense", or {" / ".join(repr(s + ":" + str(rank)) for s in cand.schemes)}.',
        )
    if scheme is not None or not cheapest:
        return cand.option(scheme or cand.schemes[0], rank)
    options = [o for o in (cand.option(s, rank) for s in cand.schemes) if o.scheme is not None]
    return min(options, key=lambda o: o.params) if options else dense_option(cand.shape)


def site_choices(cand: Candidate, multiple: int, default: Choice) -> tuple[Choice, ...]:
    """Ranks of each scheme that are multiples of ``multiple`` up to the largest useful one (thinned evenly),
    then ``"dense"``; ``default`` is added when it is not among them, so the default is reproduced exactly."""
    steps = RANK_STEPS if len(cand.schemes) == 1 else RANK_STEPS_TWO_SCHEMES
    out: list[Choice] = []
    for scheme in cand.schemes:
        top = cand.useful(scheme) // multiple * multiple
        ranks = kept_choices(top, multiple, steps=steps) if top >= multiple else ()
        out += [to_choice(cand, scheme, r) for r in ranks]
    if default not in out and default != DENSE:
        out.append(default)
        out.sort(key=_choice_order)
    return (*out, DENSE)


def _choice_order(choice: Choice) -> tuple[int, int]:
    """Integer ranks first, then the second scheme's ("spatial:8"), each ascending."""
    if isinstance(choice, int):
        return 0, choice
    return 1, int(str(choice).partition(":")[2])


def _pin(name: str, config: LowRankConfig) -> tuple[RankValue, bool] | None:
    """The rank value pinned for ``name`` and whether it came from ``layer_ranks`` (first match wins there);
    ``ranks`` (exact names) wins over ``layer_ranks``."""
    exact = dict(config.ranks)
    if name in exact:
        return exact[name], False
    for pattern, value in config.layer_ranks:
        if matches(name, (pattern,)):
            return value, True
    return None


def choose_ranks(
    work: nn.Module,
    candidates: dict[str, Candidate],
    config: LowRankConfig,
    multiple: int,
    specs: tuple[InputSpec, ...],
    calibration: Dataset | None,
) -> tuple[dict[str, Option], dict[str, Any]]:
    """One option per candidate (dense, or a scheme and rank): pins first, then the criterion on the rest; and a
    record of how they were chosen (JSON-ready)."""
    unknown = sorted(set(dict(config.ranks)) - set(candidates))
    if unknown:
        shown = ", ".join(list(candidates)[:8]) + (" ..." if len(candidates) > 8 else "")
        raise RecipeError(
            f"lowrank: ranks names layer(s) {unknown} that are not factorizable layers of this model.",
            f"Use exact names of its candidate layers: {shown or 'none'}.",
        )
    chosen: dict[str, Option] = {}
    free: dict[str, Candidate] = {}
    notes: list[str] = []
    for name, cand in candidates.items():
        pin = _pin(name, config)
        if pin is None:
            free[name] = cand
            continue
        chosen[name] = to_option(name, cand, pin[0], cheapest=pin[1])
        if chosen[name].scheme is None and pin[0] != DENSE:
            notes.append(f"{name}: rank {pin[0]} would not make it cheaper; left dense")
    # a layer with no rank that is a multiple of `multiple` and cheaper than dense has nothing to choose
    choosable = [n for n, c in free.items() if any(candidate_ranks(c.shape, s, multiple) for s in c.schemes)]
    record: dict[str, Any] = {"mode": "pinned", "notes": notes}
    if config.energy is None and config.budget is None:
        chosen |= {name: dense_option(c.shape) for name, c in free.items()}
    elif chosen and not choosable:
        # every layer that could change is pinned (what with_assignment gives): nothing is left to choose
        chosen |= {name: dense_option(c.shape) for name, c in free.items()}
        notes.append("every factorizable layer is pinned, so the criterion was not applied")
    elif config.energy is not None:
        record["mode"] = "energy"
        for name, cand in free.items():
            options = [
                cand.option(s, -(-energy_rank(cand.svds[s].s, config.energy) // multiple) * multiple)
                for s in cand.schemes
            ]
            chosen[name] = min(options, key=lambda o: (o.params, o.macs))
    else:
        chosen |= _spend_budget(work, candidates, free, chosen, config, multiple, specs, calibration, record)
    return {n: chosen[n] for n in candidates}, record


def _spend_budget(
    work: nn.Module,
    candidates: dict[str, Candidate],
    free: dict[str, Candidate],
    pinned: dict[str, Option],
    config: LowRankConfig,
    multiple: int,
    specs: tuple[InputSpec, ...],
    calibration: Dataset | None,
    record: dict[str, Any],
) -> dict[str, Option]:
    """The free layers' options meeting ``params_ratio``/``macs_ratio`` at the least loss (``ranks.allocate``)."""
    assert config.budget is not None
    kind, ratio = config.budget
    record["mode"] = f"{kind}_ratio ({config.criterion})"
    total = _model_total(work, specs, kind)
    pinned_saving = sum(
        candidates[n].shape.dense_params() - o.params if kind == "params" else candidates[n].shape.dense_macs() - o.macs
        for n, o in pinned.items()
    )
    must_save = int(np.ceil(total * (1.0 - ratio))) - pinned_saving
    if config.criterion == "sensitivity":
        from repfx_deploy.passes.lowrank.sensitivity import measured_options

        if len(specs) != 1:
            raise PassError(
                'lowrank: criterion = "sensitivity" runs the model on calibration samples, which feed one input only.',
                'Use criterion = "energy" for a model with several inputs.',
            )
        batches = calibration_batches(calibration, config)
        options = measured_options(work, free, batches, round_to=multiple, points=config.sensitivity_points)
        record["sensitivity"] = {
            n: [[o.scheme, o.rank, round(o.loss, 6)] for o in opts[1:]] for n, opts in options.items()
        }
    else:
        options = {n: energy_options(c.shape, {s: c.svds[s].s for s in c.schemes}, multiple) for n, c in free.items()}
    try:
        chosen = allocate(options, kind, must_save)
    except ValueError as e:
        raise PassError(
            f"lowrank: {kind}_ratio = {ratio} cannot be reached by factorizing ({e}).",
            f"Ask for a larger {kind}_ratio, lower round_to, or stop ignoring layers.",
        ) from e
    record |= {"budget_kind": kind, "budget_ratio": ratio, "total_before": total}
    return chosen


def _model_total(model: nn.Module, specs: tuple[InputSpec, ...], kind: str) -> int:
    from repfx_deploy.analyze.torch_stats import param_count, torch_stats

    if kind == "params":
        return param_count(model)
    return torch_stats(model, specs).macs


def calibration_batches(calibration: Dataset | None, config: LowRankConfig) -> list[torch.Tensor]:
    """The calibration batches sensitivity is measured on: a seeded shuffle (data sets are often stored ordered
    by class), ``sensitivity_batches`` x ``sensitivity_batch_size`` samples at most."""
    if calibration is None or len(calibration) == 0:
        raise PassError(
            'lowrank: criterion = "sensitivity" measures each layer on calibration data, and none was given.',
            'Set [data] calibration in the recipe (or --calibration), or use criterion = "energy".',
        )
    order = np.random.default_rng(0).permutation(len(calibration))
    n = min(config.sensitivity_batches * config.sensitivity_batch_size, len(calibration))
    x = torch.from_numpy(np.ascontiguousarray(calibration.x[np.sort(order[:n])]))
    return list(x.split(config.sensitivity_batch_size))


def install(model: nn.Module, candidates: dict[str, Candidate], chosen: dict[str, Option]) -> list[dict[str, Any]]:
    """Factorize ``model``'s layers in place as ``chosen`` says, from the cached SVDs; one record per candidate."""
    out = []
    for name, cand in candidates.items():
        o = chosen[name]
        rec: dict[str, Any] = {
            "layer": name,
            "scheme": o.scheme or DENSE,
            "rank": o.rank or None,
            "params": o.params,
            "macs": o.macs,
        }
        if o.scheme is not None:
            set_submodule(model, name, factorize(model.get_submodule(name), o.scheme, o.rank, cand.svds[o.scheme]))
            rec["energy_kept"] = round(1.0 - cand.energy_lost(o.scheme, o.rank), 6)
        out.append(rec)
    return out
