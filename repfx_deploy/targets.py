"""Device profiles: data files in ``targets/``, validated on load; unknown keys are refused.

A profile says how to compile for a device (the TVM target as a JSON dict) and how to run there (threads,
runtimes) and the parameters of its latency estimator (``[estimator]``, see ``EstimatorParams``). ``host`` is
special: its CPU and core count are detected when it is used.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from repfx_deploy.errors import TargetError

_REQUIRED = {"name", "description", "tvm_target"}
_OPTIONAL = {"threads", "runtimes", "notes", "os", "link", "channel_multiple", "rpc_key", "estimator"}
_KNOWN_RUNTIMES = ("torch", "onnxruntime", "tvm")
_OSES = ("linux", "android")
# "shared": a .so linked here (natively or with a cross g++); "objects": a .tar of object files plus the
# command that links them on a machine with the right toolchain (Android needs the NDK, not installable here).
_LINKS = ("shared", "objects")
EstimatorMethod = Literal["lookup table", "analytic model"]
_ESTIMATOR_METHODS = ("lookup table", "analytic model")
_ESTIMATOR_TEXT = ("method", "runtime", "calibrated_on", "accuracy")
_ESTIMATOR_RATES = ("conv_gmacs", "depthwise_gmacs", "pointwise_gmacs", "gemm_gmacs", "bandwidth_gbs")
_ESTIMATOR_NUMBERS = (
    *_ESTIMATOR_RATES,
    "overhead_us",
    "accuracy_pct",
    "lut_scale",
    "lut_node_offset_us",
    "lut_run_overhead_us",
    "lut_weight_gbs",
)


@dataclass(frozen=True)
class EstimatorParams:
    """The ``[estimator]`` table of a profile: what a latency estimate for this device predicts, and how.

    The analytic model costs each layer ``max(MACs / <class>_gmacs, bytes / bandwidth_gbs) + overhead_us``,
    with classes conv (dense), depthwise, pointwise (1x1) and gemm (Gemm/MatMul); other ops are costed by the
    bytes they move. ``fuse_elementwise`` folds elementwise ops that directly follow a conv/gemm into it, as
    ONNX Runtime, TVM and TF-Lite all do. ``method`` is the default: ``"lookup table"`` (measured per-layer
    latencies, only where the device is this machine) or ``"analytic model"``. ``lut_scale``,
    ``lut_node_offset_us``, ``lut_run_overhead_us`` and ``lut_weight_gbs`` turn standalone per-layer measurements
    into a whole-model prediction: ``sum(max(0, scale * layer + offset) + cold_weight_bytes / weight_gbs) +
    run_overhead``. The offset is usually negative: each standalone call pays the runtime's per-call overhead,
    which the whole model pays once. A standalone layer, called again and again, finds weights that fit in L2
    in cache; in a graph whose weights together exceed L2 they were evicted by the other layers', hence the
    cold-weight term (0 turns it off). ``runtime`` names the runtime whose latency is
    predicted; ``calibrated_on`` and ``accuracy`` (text) with ``accuracy_pct`` (the typical error, percent)
    are stated with every estimate.
    """

    method: EstimatorMethod = "analytic model"
    runtime: str = "tvm"
    calibrated_on: str = "uncalibrated"
    accuracy: str = "uncalibrated"
    accuracy_pct: float = 100.0
    conv_gmacs: float = 1.0
    depthwise_gmacs: float = 0.25
    pointwise_gmacs: float = 1.0
    gemm_gmacs: float = 1.0
    bandwidth_gbs: float = 1.0
    overhead_us: float = 10.0
    fuse_elementwise: bool = True
    lut_scale: float = 1.0
    lut_node_offset_us: float = 0.0
    lut_run_overhead_us: float = 0.0
    lut_weight_gbs: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in _ESTIMATOR_METHODS:
            raise TargetError(
                f"estimator.method must be one of {_ESTIMATOR_METHODS}, got {self.method!r}.", "Fix the profile."
            )
        for key in _ESTIMATOR_RATES:
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and 0 < value < 1e6):
                raise TargetError(
                    f"estimator.{key} must be a positive number (GMAC/s or GB/s), got {value!r}.", "Fix the profile."
                )
        for key in ("overhead_us", "accuracy_pct", "lut_run_overhead_us", "lut_weight_gbs"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and 0 <= value < 1e6):
                raise TargetError(f"estimator.{key} must be a number >= 0, got {value!r}.", "Fix the profile.")
        if not 0 < self.lut_scale < 100:
            raise TargetError(f"estimator.lut_scale must be in (0, 100), got {self.lut_scale!r}.", "Fix the profile.")
        if not -1e4 < self.lut_node_offset_us < 1e4:
            raise TargetError(
                f"estimator.lut_node_offset_us is out of range: {self.lut_node_offset_us!r}.", "Fix the profile."
            )
        for key in _ESTIMATOR_TEXT[1:]:
            if not getattr(self, key).strip():
                raise TargetError(f"estimator.{key} must not be empty.", "Say what the estimate predicts and how well.")

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _estimator_from_toml(value: Any, path: Path) -> EstimatorParams:
    """Validate the ``[estimator]`` table: unknown keys and wrong types are refused."""
    if not isinstance(value, dict):
        raise TargetError(
            f"{str(path)!r}: estimator must be a table.", "Write it as [estimator] with method, runtime, ...."
        )
    allowed = set(EstimatorParams.__dataclass_fields__)
    unknown = set(value) - allowed
    if unknown:
        raise TargetError(
            f"{str(path)!r}: [estimator] has unknown keys {sorted(unknown)}.", f"Allowed keys: {sorted(allowed)}."
        )
    for key, v in value.items():
        wrong = (
            (key in _ESTIMATOR_TEXT and not isinstance(v, str))
            or (key in _ESTIMATOR_NUMBERS and (isinstance(v, bool) or not isinstance(v, (int, float))))
            or (key == "fuse_elementwise" and not isinstance(v, bool))
        )
        if wrong:
            raise TargetError(
                f"{str(path)!r}: estimator.{key} has the wrong type ({type(v).__name__}).",
                "See targets/host.toml for the types.",
            )
    # each value's type was checked against its key above
    fields: dict[str, Any] = {k: (float(v) if k in _ESTIMATOR_NUMBERS else v) for k, v in value.items()}
    return EstimatorParams(**fields)


@dataclass(frozen=True)
class TargetProfile:
    """One device.

    ``tvm_target`` is the TVM target JSON dict; the value ``"detect"`` for ``mcpu``/``mtriple``/``num-cores``
    means "this machine's", resolved at compile time. ``threads`` 0 means every core available.
    ``link`` says how the compiled artifact is packaged (see ``_LINKS``); ``channel_multiple`` is the channel
    count that keeps this CPU's vector units full (passes round to it); ``rpc_key`` names the device in a
    TVM RPC tracker.
    """

    name: str
    description: str
    tvm_target: tuple[tuple[str, Any], ...]
    threads: int = 0
    runtimes: tuple[str, ...] = _KNOWN_RUNTIMES
    notes: str = ""
    os: str = "linux"
    link: str = "shared"
    channel_multiple: int = 8
    rpc_key: str = ""
    estimator: EstimatorParams | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.os not in _OSES:
            raise TargetError(f"Target {self.name!r}: os must be one of {_OSES}, got {self.os!r}.", "Fix the profile.")
        if self.link not in _LINKS:
            raise TargetError(
                f"Target {self.name!r}: link must be one of {_LINKS}, got {self.link!r}.", "Fix the profile."
            )
        if self.channel_multiple < 1:
            raise TargetError(f"Target {self.name!r}: channel_multiple must be >= 1.", "Use e.g. 8.")
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise TargetError(f"Target name {self.name!r} must be letters, digits, - and _.", "Rename the profile.")
        if self.threads < 0:
            raise TargetError(
                f"Target {self.name!r}: threads must be >= 0, got {self.threads}.", "Use 0 for all cores."
            )
        unknown = [r for r in self.runtimes if r not in _KNOWN_RUNTIMES]
        if unknown:
            raise TargetError(
                f"Target {self.name!r} lists unknown runtimes {unknown}.", f"Use {list(_KNOWN_RUNTIMES)}."
            )
        if dict(self.tvm_target).get("kind") != "llvm":
            raise TargetError(
                f"Target {self.name!r}: tvm_target.kind must be 'llvm' (CPU targets only).", 'Set kind = "llvm".'
            )

    @property
    def target_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.tvm_target}

    @property
    def is_host(self) -> bool:
        return any(v == "detect" for _, v in self.tvm_target)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "tvm_target": self.target_dict,
            "threads": self.threads,
            "runtimes": list(self.runtimes),
            "notes": self.notes,
            "os": self.os,
            "link": self.link,
            "channel_multiple": self.channel_multiple,
            "rpc_key": self.rpc_key or self.name,
            "estimator": self.estimator.to_dict() if self.estimator else None,
            "source": self.source,
        }


def targets_dirs() -> list[Path]:
    """Where profiles are looked up, first match wins: $REPFX_TARGETS_DIR, then the project's ``targets/``."""
    dirs = []
    if env := os.environ.get("REPFX_TARGETS_DIR"):
        dirs.append(Path(env))
    dirs.append(Path(__file__).resolve().parents[1] / "targets")
    return [d for d in dirs if d.is_dir()]


def load_profile_file(path: Path) -> TargetProfile:
    """Read and validate one profile file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TargetError(
            f"The target file {str(path)!r} does not exist.", "Check the path given to --target-file."
        ) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TargetError(f"The target file {str(path)!r} is not valid TOML: {e}", "Fix the syntax.") from e
    unknown = set(data) - _REQUIRED - _OPTIONAL
    if unknown:
        raise TargetError(
            f"{str(path)!r} has unknown keys {sorted(unknown)}.", f"Allowed keys: {sorted(_REQUIRED | _OPTIONAL)}."
        )
    missing = _REQUIRED - set(data)
    if missing:
        raise TargetError(f"{str(path)!r} lacks required keys {sorted(missing)}.", "Add them; see targets/host.toml.")
    if not isinstance(data["tvm_target"], dict):
        raise TargetError(
            f"{str(path)!r}: tvm_target must be a table.", "Write it as [tvm_target] with kind, mtriple, mcpu."
        )
    tvm_target = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in data["tvm_target"].items())
    try:
        return TargetProfile(
            name=str(data["name"]),
            description=str(data["description"]),
            tvm_target=tvm_target,
            threads=int(data.get("threads", 0)),
            runtimes=tuple(data.get("runtimes", _KNOWN_RUNTIMES)),
            notes=str(data.get("notes", "")),
            os=str(data.get("os", "linux")),
            link=str(data.get("link", "shared")),
            channel_multiple=int(data.get("channel_multiple", 8)),
            rpc_key=str(data.get("rpc_key", "")),
            estimator=_estimator_from_toml(data["estimator"], path) if "estimator" in data else None,
            source=str(path),
        )
    except (TypeError, ValueError) as e:
        raise TargetError(
            f"{str(path)!r} has a value of the wrong type: {e}", "See targets/host.toml for the types."
        ) from e


def list_profiles() -> dict[str, TargetProfile]:
    """Every profile found, by name; two files with the same name in one folder are refused."""
    found: dict[str, TargetProfile] = {}
    for folder in reversed(targets_dirs()):  # earlier folders override later ones
        names_here: set[str] = set()
        for file in sorted(folder.glob("*.toml")):
            profile = load_profile_file(file)
            if profile.name in names_here:
                raise TargetError(f"Two profiles in {str(folder)!r} are named {profile.name!r}.", "Rename one of them.")
            names_here.add(profile.name)
            found[profile.name] = profile
    return found


def get_profile(name: str | None = None, target_file: Path | None = None) -> TargetProfile:
    """The profile named ``name`` (default ``host``), or the one in ``target_file``."""
    if target_file is not None:
        return load_profile_file(target_file)
    profiles = list_profiles()
    name = name or "host"
    if name not in profiles:
        raise TargetError(
            f"Unknown target {name!r}. Known targets: {', '.join(sorted(profiles)) or 'none'}.",
            "Pick one of those, or describe your device in a TOML file and pass --target-file.",
        )
    return profiles[name]


def resolve_threads(profile: TargetProfile, requested: int = 0) -> int:
    """Threads to run with: what was asked for, else the profile's, else every core this process may use."""
    from repfx_deploy.measure.runtimes import default_threads

    return requested or profile.threads or default_threads()


def resolve_tvm_target(profile: TargetProfile, threads: int | None = None) -> dict[str, Any]:
    """The concrete TVM target dict: ``detect`` values replaced by this machine's (imports TVM)."""
    target = profile.target_dict
    if profile.is_host:
        from repfx_deploy.compile.host import host_target

        detected = host_target(threads or profile.threads or None)
        target = {k: (detected.get(k) if v == "detect" else v) for k, v in target.items()}
        target = {k: v for k, v in target.items() if v is not None}
    if "num-cores" not in target:
        target["num-cores"] = threads or profile.threads or os.cpu_count() or 1
    return target
