"""The snn pass's options, validated once into a frozen config.

Recipe keys (``[[passes]] kind = "snn"``)::

    timesteps = 1              # T of the deployed spiking network
    iir = true                 # iterative initialization and retraining: train at iir_start, then each lower T
    iir_start = 5              #   from the previous one, down to timesteps (5, 4, 3, 2, 1)
    iir_stages = [5, 2, 1]     #   or an explicit decreasing list ending at timesteps
    percentile = 99.9          # threshold = this percentile of the layer's positive ANN activations
    epochs_per_stage = 1.0     # or steps_per_stage = N (> 0 wins)
    surrogate = "triangle"     # triangle | sigmoid | atan: the spike's stand-in derivative
    lr = 1e-3, optimizer = "adam", batch_size = 64, kd_alpha = 0.5, temperature = 4.0, augment = "none"
    learn_threshold = true, learn_leak = true, initial_membrane = 0.5, maxpool = "count"   # or "or", "current"
    checkpoint_dir = "snn-ckpt"   # resumable: one checkpoint per stage, written atomically
    energy_mac_pj = 4.6, energy_ac_pj = 0.9   # per-operation energies of the ESTIMATE (45 nm, 32-bit float)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.protocol import PassConfig
from repfx_deploy.passes.snn.neurons import SURROGATES, Surrogate

MAX_TIMESTEPS = 256
# The pass's one site: the whole network runs at one T.
TIMESTEPS_SITE = "timesteps"


@dataclass(frozen=True)
class SnnConfig(PassConfig):
    """Validated snn options. ``stages()`` gives the T of each IIR stage (just ``(timesteps,)`` without IIR)."""

    kind = "snn"

    timesteps: int = 4
    iir: bool = False
    iir_start: int = 5
    iir_stages: tuple[int, ...] = ()
    percentile: float = 99.9
    epochs_per_stage: float = 1.0
    steps_per_stage: int = 0
    surrogate: Surrogate = "triangle"
    # Adam at 1e-3: the thresholds and leaks are O(1) scalars that must move in a short stage
    lr: float = 1e-3
    optimizer: Literal["sgd", "adam"] = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64
    kd_alpha: float = 0.5
    temperature: float = 4.0
    augment: Literal["none", "crop-flip"] = "none"
    learn_threshold: bool = True
    learn_leak: bool = True
    initial_membrane: float = 0.5
    # max-pools after neurons: "count" passes on the spikes of each window's most active input so far, "or"
    # takes the max of the spikes themselves (cheaper, overestimates the rate), "current" pools the neuron's
    # input currents instead and fires on the pooled map: at T = 1 the same output as the other two (a step
    # function commutes with max) but a better gradient (the window's strongest current, not one of its tied
    # spikes) and 4x fewer neurons; at T > 1 a max of per-step currents, which overestimates the rate
    maxpool: Literal["count", "or", "current"] = "count"
    calibration_batch_size: int = 64
    calibration_samples: int = 1024
    stats_samples: int = 256
    checkpoint_dir: Path | None = None
    energy_mac_pj: float = 4.6
    energy_ac_pj: float = 0.9
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, fix: str) -> RecipeError:
            return RecipeError(f"snn: {key} = {value!r} is not valid.", fix)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.timesteps) or not 1 <= self.timesteps <= MAX_TIMESTEPS:
            raise bad("timesteps", self.timesteps, f"Use an integer from 1 to {MAX_TIMESTEPS}.")
        for key in ("iir", "learn_threshold", "learn_leak", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, getattr(self, key), "Use true or false.")
        if not is_int(self.iir_start) or not 1 <= self.iir_start <= MAX_TIMESTEPS:
            raise bad("iir_start", self.iir_start, "Use an integer >= 1, e.g. 5.")
        if self.iir and not self.iir_stages and self.iir_start < self.timesteps:
            raise bad(
                "iir_start",
                self.iir_start,
                f"IIR retrains from iir_start down to timesteps ({self.timesteps}): use iir_start >= timesteps.",
            )
        if self.iir_stages:
            s = self.iir_stages
            if (
                not all(is_int(t) and t >= 1 for t in s)
                or any(a <= b for a, b in zip(s, s[1:]))
                or s[-1] != self.timesteps
            ):
                raise bad(
                    "iir_stages",
                    list(s),
                    f"Use a strictly decreasing list of integers ending at timesteps ({self.timesteps}), e.g. [5, 2, 1].",
                )
        if not isinstance(self.percentile, (int, float)) or not 50.0 <= self.percentile <= 100.0:
            raise bad("percentile", self.percentile, "Use a value in [50, 100] (100 = the maximum), e.g. 99.9.")
        if not self.epochs_per_stage > 0 or not is_int(self.steps_per_stage) or self.steps_per_stage < 0:
            raise bad(
                "epochs_per_stage/steps_per_stage",
                (self.epochs_per_stage, self.steps_per_stage),
                "Use epochs_per_stage > 0 and steps_per_stage >= 0.",
            )
        if self.surrogate not in SURROGATES:
            raise bad("surrogate", self.surrogate, f"Use one of: {', '.join(SURROGATES)}.")
        if self.optimizer not in ("sgd", "adam"):
            raise bad("optimizer", self.optimizer, "Use sgd or adam.")
        if self.augment not in ("none", "crop-flip"):
            raise bad("augment", self.augment, "Use none or crop-flip (images only).")
        if not self.lr > 0 or self.weight_decay < 0:
            raise bad("lr/weight_decay", (self.lr, self.weight_decay), "Use lr > 0 and weight_decay >= 0.")
        if not 0.0 <= self.kd_alpha <= 1.0 or not self.temperature > 0:
            raise bad(
                "kd_alpha/temperature", (self.kd_alpha, self.temperature), "Use 0 <= kd_alpha <= 1 and temperature > 0."
            )
        if self.maxpool not in ("count", "or", "current"):
            raise bad("maxpool", self.maxpool, "Use count, or or current.")
        if not 0.0 <= self.initial_membrane < 1.0:
            raise bad("initial_membrane", self.initial_membrane, "Use a fraction of the threshold in [0, 1), e.g. 0.5.")
        for key in ("batch_size", "calibration_batch_size", "calibration_samples", "stats_samples"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise bad(key, getattr(self, key), "Use a positive integer.")
        if not self.energy_mac_pj > 0 or not self.energy_ac_pj > 0:
            raise bad(
                "energy_mac_pj/energy_ac_pj", (self.energy_mac_pj, self.energy_ac_pj), "Use positive energies in pJ."
            )

    def stages(self) -> tuple[int, ...]:
        """The T of each training stage, highest first; ``()`` when IIR is off (conversion only)."""
        if not self.iir:
            return ()
        return self.iir_stages or tuple(range(self.iir_start, self.timesteps - 1, -1))

    @property
    def initial_timesteps(self) -> int:
        """The T the network is converted at: the first IIR stage, or ``timesteps``."""
        return self.stages()[0] if self.iir else self.timesteps

    def with_assignment(self, assignment: Mapping[str, Any]) -> SnnConfig:
        """The config deploying at the assigned ``timesteps``; with IIR the stages stop there (they are the same
        stages as this config's, which is why the space offers only the stages' T)."""
        T = assignment.get(TIMESTEPS_SITE, self.timesteps)
        if not self.iir:
            return dataclasses.replace(self, timesteps=T)
        stages = self.stages()
        if T not in stages:
            raise RecipeError(
                f"snn: with IIR the timesteps must be one of the stages {list(stages)}, got {T}.",
                "Choose a T the IIR schedule trains at.",
            )
        return dataclasses.replace(self, timesteps=T, iir_stages=stages[: stages.index(T) + 1])
