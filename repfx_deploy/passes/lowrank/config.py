"""The lowrank pass's options, validated once into frozen configs.

Recipe keys (``[[passes]] kind = "lowrank"``)::

    params_ratio = 0.5           # fraction of the model's parameters kept (a global budget); or
    macs_ratio = 0.5             # fraction of its MACs kept; or
    energy = 0.95                # per layer: the smallest rank keeping this fraction of the squared singular values
    criterion = "energy"         # budget modes: "energy" (discarded energy) | "sensitivity" (measured on calibration data)
    layer_ranks = { "fc1" = 32, "layer3.*" = "dense" }   # fixed ranks (or "dense") for matching layers, first match wins
    conv_scheme = "channel"      # channel (k x k to r, then 1 x 1) | spatial (k x 1 then 1 x k) | auto (the cheaper)
    round_to = 8                 # ranks are multiples of it (vector lanes); default: the target's channel_multiple
    ignore = ["head"]            # layers left dense
    unfuse_attention = true      # swap nn.MultiheadAttention / TransformerEncoder(Layer) for stand-ins with plain linears
    sensitivity_points = 8, sensitivity_batches = 2, sensitivity_batch_size = 32
    bn_recalibrate = true        # re-estimate BatchNorm statistics on the calibration data afterwards
    trained_rank = false         # TRP: fine-tune the dense layers with a nuclear-norm penalty before factorizing
    nuclear_weight = 1e-4        # TRP penalty weight
    finetune_epochs = 0, finetune_steps = 0   # distillation from the original model after factorizing
    lr, batch_size, augment, temperature, alpha, optimizer, weight_decay, checkpoint, seed   # fine-tuning
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from repfx_deploy.errors import RecipeError

Criterion = Literal["energy", "sensitivity"]
ConvScheme = Literal["channel", "spatial", "auto"]
CRITERIA = ("energy", "sensitivity")
CONV_SCHEMES = ("channel", "spatial", "auto")


@dataclass(frozen=True)
class LowRankConfig:
    """How ranks are chosen. Exactly one of ``params_ratio``, ``macs_ratio``, ``energy`` sets the mode (with none,
    ``params_ratio = 0.5``); ``layer_ranks`` pins ranks (``"dense"`` keeps a layer whole) and may be used alone
    (``layer_ranks_only``), in which case only the pinned layers change."""

    params_ratio: float | None = None
    macs_ratio: float | None = None
    energy: float | None = None
    criterion: Criterion = "energy"
    layer_ranks: tuple[tuple[str, int | str], ...] = ()
    conv_scheme: ConvScheme = "channel"
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    unfuse_attention: bool = True
    sensitivity_points: int = 8
    sensitivity_batches: int = 2
    sensitivity_batch_size: int = 32

    def __post_init__(self) -> None:
        modes = [k for k in ("params_ratio", "macs_ratio", "energy") if getattr(self, k) is not None]
        if len(modes) > 1:
            raise ValueError(f"set one of params_ratio, macs_ratio, energy (got {', '.join(modes)})")
        if not modes and not self.layer_ranks:
            object.__setattr__(self, "params_ratio", 0.5)
        for key in ("params_ratio", "macs_ratio"):
            v = getattr(self, key)
            if v is not None and not 0.0 < float(v) < 1.0:
                raise ValueError(f"{key} is the fraction kept, in (0, 1); got {v}")
        if self.energy is not None and not 0.0 < float(self.energy) < 1.0:
            raise ValueError(f"energy is the fraction of squared singular values kept, in (0, 1); got {self.energy}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {self.criterion!r}")
        if self.criterion == "sensitivity" and self.budget is None:
            raise ValueError("criterion = 'sensitivity' spends a budget: set params_ratio or macs_ratio")
        if self.conv_scheme not in CONV_SCHEMES:
            raise ValueError(f"conv_scheme must be one of {', '.join(CONV_SCHEMES)}; got {self.conv_scheme!r}")
        if isinstance(self.layer_ranks, Mapping):
            object.__setattr__(self, "layer_ranks", tuple(self.layer_ranks.items()))
        for pattern, rank in self.layer_ranks:
            ok_rank = rank == "dense" or (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1)
            if not isinstance(pattern, str) or not pattern or not ok_rank:
                raise ValueError(f'layer_ranks maps a layer name pattern to a rank >= 1 or "dense"; got {pattern!r}: {rank!r}')
        if isinstance(self.ignore, (list, str)):
            object.__setattr__(self, "ignore", (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore))
        if not all(isinstance(p, str) and p for p in self.ignore):
            raise ValueError(f"ignore holds layer name patterns; got {self.ignore!r}")
        for key in ("round_to", "sensitivity_points", "sensitivity_batches", "sensitivity_batch_size"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{key} must be a positive integer; got {v!r}")
        if not isinstance(self.unfuse_attention, bool):
            raise ValueError(f"unfuse_attention must be true or false; got {self.unfuse_attention!r}")

    @property
    def budget(self) -> tuple[Literal["params", "macs"], float] | None:
        """``("params", ratio)`` or ``("macs", ratio)`` in budget mode, else None."""
        if self.params_ratio is not None:
            return "params", float(self.params_ratio)
        if self.macs_ratio is not None:
            return "macs", float(self.macs_ratio)
        return None


@dataclass(frozen=True)
class TrainedRankConfig:
    """TRP (Xu et al., "Trained Rank Pruning", 2019): before factorizing, the candidate layers are fine-tuned with
    ``nuclear_weight * sum of their nuclear norms`` added to the distillation loss, which pushes their small
    singular values toward zero, so the ranks chosen afterwards are lower for the same loss."""

    enabled: bool = False
    nuclear_weight: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"trained_rank must be true or false; got {self.enabled!r}")
        if not float(self.nuclear_weight) > 0:
            raise ValueError(f"nuclear_weight must be > 0; got {self.nuclear_weight}")


LOWRANK_KEYS = (
    "params_ratio", "macs_ratio", "energy", "criterion", "layer_ranks", "conv_scheme", "round_to", "ignore",
    "unfuse_attention", "sensitivity_points", "sensitivity_batches", "sensitivity_batch_size",
)
TRP_KEYS = ("trained_rank", "nuclear_weight")


@dataclass(frozen=True)
class LowRankOptions:
    """Everything a recipe table asks of the pass."""

    config: LowRankConfig
    trp: TrainedRankConfig
    recovery: Any  # recovery.options.RecoveryOptions (kept untyped so this module imports nothing heavy)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], target_name: str = "host") -> "LowRankOptions":
        """Parse a recipe table (without ``kind``); ``RecipeError`` for unknown keys or bad values. ``round_to``
        defaults to the target profile's ``channel_multiple``, so ranks fill whole vector registers. The
        recovery keys are parsed by ``recovery.options`` (the same keys and meaning in every pass)."""
        from repfx_deploy.passes.recovery.options import RECOVERY_KEYS, parse_recovery
        from repfx_deploy.targets import get_profile

        allowed = LOWRANK_KEYS + TRP_KEYS + RECOVERY_KEYS
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise RecipeError(f"Unknown option(s) {', '.join(map(repr, unknown))} in the lowrank pass.", f"Use only: {', '.join(allowed)}.")
        values = {k: options[k] for k in LOWRANK_KEYS if k in options}
        if "layer_ranks" in values and not isinstance(values["layer_ranks"], Mapping):
            raise RecipeError("layer_ranks must be a table of layer name pattern = rank.", 'Write layer_ranks = { "fc1" = 32, "head" = "dense" }.')
        if values.get("round_to") is None:
            values["round_to"] = get_profile(target_name).channel_multiple
        try:
            config = LowRankConfig(**values)
            trp = TrainedRankConfig(enabled=options.get("trained_rank", False), nuclear_weight=options.get("nuclear_weight", 1e-4))
        except (TypeError, ValueError) as e:
            raise RecipeError(f"Bad lowrank pass option: {e}", "Fix the value in the recipe's [[passes]] table.") from e
        recovery = parse_recovery(options, "lowrank")
        if trp.enabled and recovery.finetune is None:
            raise RecipeError("trained_rank = true trains with a nuclear-norm penalty, but no fine-tuning budget is set.",
                              "Set finetune_epochs or finetune_steps (the TRP phase and the recovery after factorizing each use it).")
        if "nuclear_weight" in options and not trp.enabled:
            raise RecipeError("nuclear_weight is set but trained_rank is not.", "Set trained_rank = true, or drop nuclear_weight.")
        return cls(config, trp, recovery)
