"""The lowrank pass's config: one frozen dataclass, parsed from the recipe by ``options.parse_config``.

Recipe keys (``[[passes]] kind = "lowrank"``)::

    params_ratio = 0.5           # fraction of the model's parameters kept (a global budget); or
    macs_ratio = 0.5             # fraction of its MACs kept; or
    energy = 0.95                # per layer: the smallest rank keeping this fraction of the squared singular values
    criterion = "energy"         # budget modes: "energy" (discarded energy) | "sensitivity" (measured on calibration data)
    layer_ranks = { "fc1" = 32, "layer3.*" = "dense" }   # pins by name pattern (glob or prefix), first match wins
    ranks = { "layer1.0.conv1" = 16, "fc" = "dense" }     # pins by exact layer name; win over layer_ranks
    conv_scheme = "channel"      # channel (k x k to r, then 1 x 1) | spatial (k x 1 then 1 x k) | auto (per layer)
    round_to = 8                 # ranks are multiples of it (vector lanes); default: the target's channel_multiple
    ignore = ["head"]            # layers left dense
    unfuse_attention = true      # swap nn.MultiheadAttention / TransformerEncoder(Layer) for stand-ins with plain linears
    sensitivity_points = 8, sensitivity_batches = 2, sensitivity_batch_size = 32
    bn_recalibrate = true        # re-estimate BatchNorm statistics on the calibration data afterwards
    bn_batches = 32
    trained_rank = false         # TRP: train the dense layers with a nuclear-norm penalty before factorizing
    nuclear_weight = 1e-4        # TRP penalty weight
    trp_epochs = 1, trp_steps = 0, trp_lr = 0.01, trp_batch_size = 64, trp_optimizer = "sgd",
    trp_weight_decay = 5e-4, trp_augment = "none", trp_seed = 0, trp_data = "auto"   # the TRP training run

A rank value (in ``ranks`` and ``layer_ranks``) is ``"dense"`` (the layer kept whole), an integer, or
``"<scheme>:<rank>"`` (``"spatial:12"``) naming the scheme. In ``ranks`` an integer is a rank of the layer's
first scheme (``linear``; for a conv ``channel``, or ``spatial`` when ``conv_scheme = "spatial"``); in
``layer_ranks`` it keeps its older meaning, the cheapest allowed scheme at that rank. Fine-tuning after
factorizing is the recover pass's job (``kind = "recover"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Literal

from repfx_deploy.passes.protocol import Assignment, PassConfig

if TYPE_CHECKING:
    from repfx_deploy.passes.recovery.distill import FinetuneConfig

Criterion = Literal["energy", "sensitivity"]
ConvScheme = Literal["channel", "spatial", "auto"]
Scheme = Literal["linear", "channel", "spatial"]
SCHEMES: tuple[Scheme, ...] = ("linear", "channel", "spatial")
DENSE = "dense"
RankValue = int | str

# The fields of the TRP run: all must be at their defaults unless trained_rank is on.
_TRP_FIELDS = (
    "nuclear_weight",
    "trp_epochs",
    "trp_steps",
    "trp_lr",
    "trp_batch_size",
    "trp_optimizer",
    "trp_weight_decay",
    "trp_augment",
    "trp_seed",
    "trp_data",
)


def parse_rank(value: RankValue) -> tuple[Scheme | None, int] | None:
    """A rank value -> ``None`` (dense), ``(None, r)`` (no scheme named) or ``(scheme, r)``; ``ValueError``
    for anything else."""
    if value == DENSE:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 1:
            return None, value
    elif isinstance(value, str) and ":" in value:
        scheme, _, rank = value.partition(":")
        if scheme in SCHEMES and rank.isdigit() and int(rank) >= 1:
            return scheme, int(rank)
    raise ValueError(
        f'a rank is an integer >= 1, "dense" or "<scheme>:<rank>" with scheme one of {", ".join(SCHEMES)}; got {value!r}'
    )


@dataclass(frozen=True)
class LowRankConfig(PassConfig):
    """How ranks are chosen. Exactly one of ``params_ratio``, ``macs_ratio``, ``energy`` sets the criterion (with
    none and no pins, ``params_ratio = 0.5``); ``ranks`` (exact names) and ``layer_ranks`` (patterns) pin layers
    and may be used alone, in which case only the pinned layers change. When every layer that could be
    factorized is pinned, the criterion has nothing left to choose and is not applied (this is what
    ``with_assignment`` relies on)."""

    kind = "lowrank"

    params_ratio: float | None = None
    macs_ratio: float | None = None
    energy: float | None = None
    criterion: Criterion = "energy"
    layer_ranks: tuple[tuple[str, RankValue], ...] = ()
    ranks: tuple[tuple[str, RankValue], ...] = ()
    conv_scheme: ConvScheme = "channel"
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    unfuse_attention: bool = True
    sensitivity_points: int = 8
    sensitivity_batches: int = 2
    sensitivity_batch_size: int = 32
    bn_recalibrate: bool = True
    bn_batches: int = 32
    trained_rank: bool = False
    nuclear_weight: float = 1e-4
    trp_epochs: float = 1.0
    trp_steps: int = 0
    trp_lr: float = 0.01
    trp_batch_size: int = 64
    trp_optimizer: Literal["sgd", "adam"] = "sgd"
    trp_weight_decay: float = 5e-4
    trp_augment: Literal["none", "crop-flip"] = "none"
    trp_seed: int = 0
    trp_data: Literal["auto", "train", "calibration"] = "auto"

    def __post_init__(self) -> None:
        # from Python, a dict of pins and a list of patterns are accepted too (the recipe parser gives tuples)
        for key in ("layer_ranks", "ranks"):
            if isinstance(getattr(self, key), Mapping):
                object.__setattr__(self, key, tuple(getattr(self, key).items()))
        if isinstance(self.ignore, (list, str)):
            object.__setattr__(self, "ignore", (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore))
        modes = [k for k in ("params_ratio", "macs_ratio", "energy") if getattr(self, k) is not None]
        if len(modes) > 1:
            raise ValueError(f"set one of params_ratio, macs_ratio, energy (got {', '.join(modes)})")
        if not modes and not self.layer_ranks and not self.ranks:
            object.__setattr__(self, "params_ratio", 0.5)
        for key in ("params_ratio", "macs_ratio"):
            v = getattr(self, key)
            if v is not None and not 0.0 < float(v) < 1.0:
                raise ValueError(f"{key} is the fraction kept, in (0, 1); got {v}")
        if self.energy is not None and not 0.0 < float(self.energy) < 1.0:
            raise ValueError(f"energy is the fraction of squared singular values kept, in (0, 1); got {self.energy}")
        if self.criterion not in ("energy", "sensitivity"):
            raise ValueError(f"criterion must be 'energy' or 'sensitivity'; got {self.criterion!r}")
        if self.criterion == "sensitivity" and self.budget is None:
            raise ValueError("criterion = 'sensitivity' spends a budget: set params_ratio or macs_ratio")
        if self.conv_scheme not in ("channel", "spatial", "auto"):
            raise ValueError(f"conv_scheme must be one of channel, spatial, auto; got {self.conv_scheme!r}")
        for key in ("layer_ranks", "ranks"):
            pins = getattr(self, key)
            for name, value in pins:
                if not isinstance(name, str) or not name:
                    raise ValueError(f"{key} maps a layer name to a rank; got the name {name!r}")
                try:
                    parse_rank(value)
                except ValueError as e:
                    raise ValueError(f"{key}[{name!r}]: {e}") from None
            names = [n for n, _ in pins]
            if len(set(names)) != len(names):
                raise ValueError(f"{key} names a layer twice: {sorted({n for n in names if names.count(n) > 1})}")
        if not all(isinstance(p, str) and p for p in self.ignore):
            raise ValueError(f"ignore holds layer name patterns; got {self.ignore!r}")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(
                f"round_to must be a positive integer (or left out: the target's channel_multiple); got {self.round_to}"
            )
        for key in ("sensitivity_points", "sensitivity_batches", "sensitivity_batch_size", "bn_batches"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer; got {getattr(self, key)!r}")
        if not self.nuclear_weight > 0:
            raise ValueError(f"nuclear_weight must be > 0; got {self.nuclear_weight}")
        if self.trained_rank:
            if self.trp_epochs < 0 or self.trp_steps < 0 or (self.trp_epochs == 0 and self.trp_steps == 0):
                raise ValueError(
                    f"trained_rank = true trains first: set trp_epochs > 0 or trp_steps > 0 (got {self.trp_epochs}, {self.trp_steps})"
                )
            _ = self.trp_finetune  # FinetuneConfig checks lr, batch size, weight decay
        else:
            defaults = {f.name: f.default for f in fields(self)}
            stray = [k for k in _TRP_FIELDS if getattr(self, k) != defaults[k]]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} set but trained_rank is not: set trained_rank = true, or drop them"
                )

    @property
    def budget(self) -> tuple[Literal["params", "macs"], float] | None:
        """``("params", ratio)`` or ``("macs", ratio)`` in budget mode, else None."""
        if self.params_ratio is not None:
            return "params", float(self.params_ratio)
        if self.macs_ratio is not None:
            return "macs", float(self.macs_ratio)
        return None

    @property
    def trp_finetune(self) -> FinetuneConfig | None:
        """TRP's training run (Xu et al., "Trained Rank Pruning", 2019), or None without ``trained_rank``: the
        candidate layers are trained dense with ``nuclear_weight * sum of their nuclear norms`` added to the
        distillation loss, which pushes their small singular values toward zero, so the ranks chosen afterwards
        are lower for the same loss."""
        from repfx_deploy.passes.recovery.distill import FinetuneConfig

        if not self.trained_rank:
            return None
        return FinetuneConfig(
            epochs=self.trp_epochs if self.trp_epochs > 0 else 1.0,
            steps=self.trp_steps,
            batch_size=self.trp_batch_size,
            lr=self.trp_lr,
            optimizer=self.trp_optimizer,
            weight_decay=self.trp_weight_decay,
            augment=self.trp_augment,
            seed=self.trp_seed,
        )

    def with_assignment(self, assignment: Assignment) -> LowRankConfig:
        """This config with ``ranks`` = ``assignment`` (site name -> choice, every site): each layer of the space
        is then pinned, so the criterion is not run and the result is exactly that assignment's."""
        return replace(self, ranks=tuple((name, choice) for name, choice in assignment.items()))
