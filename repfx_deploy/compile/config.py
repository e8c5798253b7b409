"""How to compile: the target, the tuning budget and database, and the layout and schedule knobs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from repfx_deploy.compile.host import (
    canonical_target_json,
    default_tuning_db,
    target_hash,
)

CONV_LAYOUTS = ("NHWC", "NCHW")


@dataclass(frozen=True)
class RpcTuning:
    """Measure tuning candidates on a device from a TVM RPC tracker (``HOST:PORT``) instead of on this machine.

    ``session_timeout_s`` bounds each candidate's session on the device (emulated devices are slow).
    """

    tracker: str
    key: str
    session_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
        from repfx_deploy.measure.rpc.server import check_key

        RpcEndpoint.parse(self.tracker)
        check_key(self.key)
        if self.session_timeout_s <= 0:
            raise ValueError("session_timeout_s must be positive")


@dataclass(frozen=True)
class CompileConfig:
    """What ``compile_onnx`` does.

    ``target``: a TVM target JSON dict (see ``host_target``); accepted as a dict or JSON text and
    stored as canonical JSON text so the config stays hashable; read it back with ``target_dict``.

    ``tune_trials``: MetaSchedule trials to spend before building (0: no tuning). Workloads that
    already have records in ``tuning_db`` are not tuned again, and records are applied whether or
    not this run tunes.

    ``tuning_db``: the MetaSchedule JSON database folder; ``None`` means ``default_tuning_db(target)``
    (``~/.cache/repfx-deploy/tuning/<target hash>``, root overridable with ``REPFX_TUNING_DB``).

    ``conv_layout``: ``"NHWC"`` (default) converts convolutions and the ops around them to
    NHWC with HWIO weights, folded at compile time (so weights are prepacked with no change to the
    calling convention); the default schedule vectorizes over channels, which needs it.
    ``"NCHW"`` keeps the ONNX layout.

    ``default_schedule``: give every kernel that has no tuning record the built-in CPU schedule
    (register tiling, vectorization, threads). Off, such kernels are TVM's plain scalar loops, which
    are 10-50x slower; keep it on except to measure that.

    ``fast_math``: compute softmax, exp, erf and tanh with TVM's vectorizable polynomial
    approximations instead of libm calls (exp within 4e-6 relative; softmax 3x faster on the CIFAR ViT).
    ``pad_channels``: compute NHWC convolutions whose output width is not a whole number of vectors
    (24, 40, 56 channels on AVX-512) at the next whole width and drop the extra channels in the epilogue
    (``pad_channels.py``); same outputs, fewer vector instructions.
    ``wide_convs_nchw``: with NHWC, keep stride-1 convolutions whose output rows are at least two whole
    vectors long in NCHW, vectorized along the row (``wide_convs.py``): narrow-channel layers run at
    full vector width.

    ``tune_max_s``: stop starting new tuning tasks after this many seconds (``None``: no limit).
    ``link``: ``"shared"`` writes ``model.so`` (cross-linked for foreign Linux targets); ``"objects"``
    writes ``model.tar`` and the command that links it (Android: the NDK is not available here).
    ``builder_timeout_s``: MetaSchedule's per-candidate compile timeout (its 30 s default expires
    under load and leaves tasks with no schedule).
    ``tune_rpc``: tune on a device over TVM RPC (candidates cross-linked here, timed there); required to
    tune a target that is not this machine.
    """

    target: Mapping | str
    tune_trials: int = 0
    tuning_db: Path | None = None
    conv_layout: str = "NHWC"
    default_schedule: bool = True
    fast_math: bool = True
    pad_channels: bool = True
    wide_convs_nchw: bool = True
    tune_max_s: float | None = None
    builder_timeout_s: float = 90.0
    link: str = "shared"
    tune_rpc: RpcTuning | None = None

    def __post_init__(self) -> None:
        target = self.target
        if isinstance(target, str):
            try:
                target = json.loads(target)
            except json.JSONDecodeError as e:
                raise ValueError(f"CompileConfig.target is not JSON: {e}") from e
        if not isinstance(target, Mapping) or not isinstance(target.get("kind"), str):
            raise ValueError("CompileConfig.target must be a TVM target dict with a 'kind', e.g. host_target()")
        if target["kind"] == "llvm" and "num-cores" not in target:
            raise ValueError("An llvm target needs 'num-cores' (MetaSchedule refuses targets without it)")
        object.__setattr__(self, "target", canonical_target_json(dict(target)))
        if isinstance(self.tune_trials, bool) or not isinstance(self.tune_trials, int) or self.tune_trials < 0:
            raise ValueError(f"tune_trials must be an int >= 0, got {self.tune_trials!r}")
        if self.conv_layout not in CONV_LAYOUTS:
            raise ValueError(f"conv_layout must be one of {CONV_LAYOUTS}, got {self.conv_layout!r}")
        if self.tune_max_s is not None and self.tune_max_s <= 0:
            raise ValueError("tune_max_s must be positive or None")
        if self.link not in ("shared", "objects"):
            raise ValueError(f"link must be 'shared' or 'objects', got {self.link!r}")
        if self.builder_timeout_s <= 0:
            raise ValueError("builder_timeout_s must be positive")
        db = Path(self.tuning_db).expanduser() if self.tuning_db is not None else default_tuning_db(self.target_dict)
        object.__setattr__(self, "tuning_db", db)

    @property
    def target_json(self) -> str:
        """The target as canonical JSON text (what ``__post_init__`` stores in ``target``)."""
        assert isinstance(self.target, str), "__post_init__ stores the target as JSON text"
        return self.target

    @property
    def tuning_db_path(self) -> Path:
        """The tuning database folder (``__post_init__`` resolves ``None`` to ``default_tuning_db``)."""
        assert self.tuning_db is not None, "__post_init__ resolves tuning_db"
        return self.tuning_db

    @property
    def target_dict(self) -> dict:
        """The target as a fresh dict (safe to modify)."""
        return json.loads(self.target_json)

    @property
    def target_hash(self) -> str:
        return target_hash(self.target_dict)

    def to_dict(self) -> dict:
        return {
            "target": self.target_dict,
            "tune_trials": self.tune_trials,
            "tuning_db": str(self.tuning_db),
            "conv_layout": self.conv_layout,
            "default_schedule": self.default_schedule,
            "fast_math": self.fast_math,
            "pad_channels": self.pad_channels,
            "wide_convs_nchw": self.wide_convs_nchw,
            "tune_max_s": self.tune_max_s,
            "builder_timeout_s": self.builder_timeout_s,
            "link": self.link,
            "tune_rpc": None if self.tune_rpc is None else {"tracker": self.tune_rpc.tracker, "key": self.tune_rpc.key},
        }
