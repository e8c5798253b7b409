"""The one protocol every pass speaks: typed config, a space of knobs, prepare once, apply many.

A pass is a ``Pass`` subclass registered for its config type (``registry.register_pass``):

    config = PruneConfig(macs_ratio=0.5)                 # a frozen dataclass, validated in __post_init__
    prepared = PRUNE.prepare(module, config, context)    # the expensive part, once per model and config
    prepared.space                                       # SearchSpace: every site, its knob, choices, default
    result = PRUNE.apply_assignment(prepared, {"layer1.0.conv1": 8})   # cheap; as many times as wanted
    PRUNE.apply(module, config, context)                 # = apply_assignment(prepare(...), space.defaults())

Contracts every pass keeps (tests/fixtures/protocol_checks.py checks them, from each kind's test_protocol.py):

- A pass never changes the module it is given, in ``prepare`` or in ``apply_assignment``.
- ``config.with_assignment(a)`` is the config whose plain ``apply`` gives exactly ``apply_assignment(p, a)``,
  and the space's default assignment reproduces the recipe's own result.
- Choices are in "kept" units (channels kept, rank kept, tokens kept, bits, timesteps), so a search needs no
  pass-specific arithmetic, and widths are snapped to the target profile's ``channel_multiple``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from repfx_deploy.errors import RecipeError

if TYPE_CHECKING:
    import torch.nn as nn

    from repfx_deploy.analyze.torch_stats import ModelStats
    from repfx_deploy.data.datasets import Dataset
    from repfx_deploy.spec import InputSpec
    from repfx_deploy.targets import TargetProfile

Choice = int | str
Assignment = Mapping[str, Choice]
# What a site's choices count. Widths and counts are what is *kept*; bits name a precision ("4", "8", "float").
Knob = Literal[
    "channels_kept", "rank_kept", "width_kept", "weight_bits", "activation_bits", "bits", "tokens_kept", "timesteps"
]
KNOBS: tuple[str, ...] = (
    "channels_kept",
    "rank_kept",
    "width_kept",
    "weight_bits",
    "activation_bits",
    "bits",
    "tokens_kept",
    "timesteps",
)


@dataclass(frozen=True)
class Site:
    """One place a pass can be set on its own: ``name`` is the exact name the report uses for it."""

    name: str
    knob: Knob
    choices: tuple[Choice, ...]
    default: Choice
    # the choice that leaves the site as it was (all channels, full rank, float), when there is one
    unchanged: Choice | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a site needs a name")
        if self.knob not in KNOBS:
            raise ValueError(f"site {self.name!r}: knob must be one of {KNOBS}, got {self.knob!r}")
        if not self.choices or len(set(self.choices)) != len(self.choices):
            raise ValueError(f"site {self.name!r}: choices must be non-empty and distinct, got {self.choices!r}")
        if self.default not in self.choices:
            raise ValueError(f"site {self.name!r}: default {self.default!r} is not one of its choices {self.choices!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "knob": self.knob,
            "choices": list(self.choices),
            "default": self.default,
            "unchanged": self.unchanged,
        }


@dataclass(frozen=True)
class SearchSpace:
    """Every site of one pass on one model. An empty space (a pass with no per-site knob) has size 1."""

    kind: str
    sites: tuple[Site, ...] = ()

    def __post_init__(self) -> None:
        names = [s.name for s in self.sites]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{self.kind}: site names must be unique; repeated: {dupes}")

    @property
    def size(self) -> int:
        """How many distinct assignments there are."""
        return math.prod(len(s.choices) for s in self.sites)

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def defaults(self) -> dict[str, Choice]:
        """The assignment that reproduces the config the space was made from."""
        return {s.name: s.default for s in self.sites}

    def complete(self, assignment: Assignment) -> dict[str, Choice]:
        """``assignment`` with every site it leaves out at its default; ``RecipeError`` for an unknown site or a
        choice the site does not offer (both named, with what is allowed)."""
        by_name = {s.name: s for s in self.sites}
        unknown = sorted(set(assignment) - set(by_name))
        if unknown:
            shown = ", ".join(list(by_name)[:8]) + (" ..." if len(by_name) > 8 else "")
            raise RecipeError(
                f"The {self.kind} pass has no site(s) {unknown}.", f"Use sites of its space: {shown or 'none'}."
            )
        out = self.defaults()
        for name, choice in assignment.items():
            site = by_name[name]
            if choice not in site.choices:
                raise RecipeError(
                    f"{self.kind} site {name!r} ({site.knob}) cannot take {choice!r}.",
                    f"Choose one of {list(site.choices)}.",
                )
            out[name] = choice
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "size": self.size,
            "sites": [s.to_dict() for s in self.sites],
            "default": self.defaults(),
        }


def kept_choices(full: int, multiple: int, *, minimum: int = 1, steps: int | None = None) -> tuple[int, ...]:
    """Choices for a width or count of ``full``: multiples of ``multiple`` from the smallest one >= ``minimum``
    up to ``full``, plus ``full`` itself (kept whole). ``steps`` thins them to about that many, evenly spaced,
    always keeping the smallest and ``full``."""
    multiple = max(1, multiple)
    lo = max(multiple, math.ceil(max(1, minimum) / multiple) * multiple)
    values = list(range(lo, full, multiple)) + [full]
    if steps is not None and len(values) > steps > 1:
        idx = sorted({round(i * (len(values) - 1) / (steps - 1)) for i in range(steps)})
        values = [values[i] for i in idx]
    return tuple(values)


def snap(value: int, choices: tuple[int, ...]) -> int:
    """The choice nearest ``value`` (ties go to the larger, which keeps more)."""
    return min(choices, key=lambda c: (abs(c - value), -c))


@dataclass(frozen=True)
class PassContext:
    """What a pass may use besides the module: the input signature, the target profile (the object, so a
    profile from a file works the same as a built-in one), the user's data, and the model before any pass
    (``reference``: the teacher of a recovery pass)."""

    input_specs: tuple[InputSpec, ...]
    profile: TargetProfile
    calibration: Dataset | None = None
    train: Dataset | None = None
    reference: nn.Module | None = None
    # True when the caller exports the result and checks that artifact itself (compress does): a pass then skips
    # its own scratch export, whose settings could differ from the artifact's
    artifact_checks: bool = False

    @property
    def target_name(self) -> str:
        return self.profile.name

    @property
    def channel_multiple(self) -> int:
        return self.profile.channel_multiple


@dataclass
class PassResult:
    """What every pass returns, in one shape: the new module, its parameters and MACs before and after, the
    choice made at each site (``decisions``, keyed like the space), the time taken, and what is particular to
    the pass under ``extras`` (JSON-ready)."""

    kind: str
    module: nn.Module
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    decisions: dict[str, Choice]
    time_s: float
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def params_kept(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def macs_kept(self) -> float:
        return self.macs_after / max(self.macs_before, 1)

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record of this result (the report's entry for the pass, without the module)."""
        return {
            "kind": self.kind,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_kept": round(self.params_kept, 4),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_kept": round(self.macs_kept, 4),
            "decisions": dict(self.decisions),
            "time_s": round(self.time_s, 3),
            "extras": self.extras,
        }


C = TypeVar("C", bound="PassConfig")


class PassConfig(ABC):
    """Base of every pass's frozen config dataclass. ``kind`` is the recipe's name for the pass."""

    kind: ClassVar[str]

    @classmethod
    def from_table(cls: type[C], table: Mapping[str, Any], where: str) -> C:
        """The config from a recipe table (without ``kind``); ``RecipeError`` naming ``where.key`` on a bad key."""
        from repfx_deploy.options import parse_config

        return parse_config(cls, table, where)

    def to_table(self) -> dict[str, Any]:
        """The recipe table (without ``kind``) that ``from_table`` turns back into this config."""
        from repfx_deploy.options import config_table

        return config_table(self)

    @abstractmethod
    def with_assignment(self: C, assignment: Assignment) -> C:
        """The config that applies exactly ``assignment`` (every site of the space, as ``complete`` gives)."""


@dataclass
class Prepared(Generic[C]):
    """The result of ``Pass.prepare``: the untouched input module, the config, the context, the space and the
    counts of the input; passes subclass it to keep what they computed (scores, factors, statistics)."""

    module: nn.Module
    config: C
    context: PassContext
    space: SearchSpace
    before: ModelStats


class Pass(ABC, Generic[C]):
    """One pass. Subclasses set ``kind`` and ``config_type`` and implement ``prepare`` and ``apply_assignment``."""

    kind: ClassVar[str]
    config_type: ClassVar[type[PassConfig]]

    @abstractmethod
    def prepare(self, module: nn.Module, config: C, context: PassContext) -> Prepared[C]:
        """The expensive, assignment-independent work; must not change ``module``."""

    @abstractmethod
    def apply_assignment(self, prepared: Prepared[C], assignment: Assignment) -> PassResult:
        """A new module with ``assignment`` applied (sites left out take their default); ``prepared.module`` is
        left unchanged, so this may be called many times."""

    def space(self, module: nn.Module, config: C, context: PassContext) -> SearchSpace:
        return self.prepare(module, config, context).space

    def apply(self, module: nn.Module, config: C, context: PassContext) -> PassResult:
        """Prepare and apply the config's own assignment; ``time_s`` covers both (``extras["prepare_s"]``: the
        preparation's share)."""
        started = time.perf_counter()
        prepared = self.prepare(module, config, context)
        prepare_s = time.perf_counter() - started
        result = self.apply_assignment(prepared, prepared.space.defaults())
        result.time_s += prepare_s
        result.extras.setdefault("prepare_s", round(prepare_s, 3))
        return result


def count(module: nn.Module, context: PassContext) -> ModelStats:
    """Parameters and MACs of ``module``; its train/eval modes are left as they were (counting runs it in eval)."""
    from repfx_deploy.analyze.torch_stats import torch_stats

    modes = {m: m.training for m in module.modules()}
    try:
        return torch_stats(module, context.input_specs)
    finally:
        for m, mode in modes.items():
            m.training = mode


def finish(
    prepared: Prepared[Any],
    module: nn.Module,
    decisions: Mapping[str, Choice],
    started: float,
    extras: dict[str, Any] | None = None,
) -> PassResult:
    """The ``PassResult`` of ``module`` made from ``prepared``: counts it, times it from ``started``
    (``time.perf_counter()`` at the start of ``apply_assignment``)."""
    after = count(module, prepared.context)
    return PassResult(
        kind=prepared.config.kind,
        module=module,
        params_before=prepared.before.params,
        params_after=after.params,
        macs_before=prepared.before.macs,
        macs_after=after.macs,
        decisions=dict(decisions),
        time_s=time.perf_counter() - started,
        extras=dict(extras or {}),
    )
