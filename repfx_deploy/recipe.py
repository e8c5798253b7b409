"""Recipes: a TOML file that says what ``compress`` does, and the resolved copy that reproduces a run.

Top level: ``target``, ``input_shape`` (a string or a list of strings), optional ``arch`` and ``opset``,
``tune_trials``; a ``[data]`` table (``calibration``, ``eval``, ``train`` paths, relative to the recipe file,
plus ``calibration_samples``, ``eval_samples``) with a ``[data.preprocess]`` table; then an ordered
``[[passes]]`` array, each with ``kind`` and that pass's own keys. Unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repfx_deploy.data.preprocess import Preprocess
from repfx_deploy.errors import DataError, RecipeError
from repfx_deploy.spec import InputSpec, parse_input_shapes

_TOP_KEYS = {"target", "input_shape", "arch", "opset", "exporter", "tune_trials", "threads", "data", "passes"}
_DATA_KEYS = {"calibration", "eval", "train", "calibration_samples", "eval_samples", "preprocess"}
_PREPROCESS_KEYS = {"size", "mean", "std", "layout", "scale"}


@dataclass(frozen=True)
class DataConfig:
    calibration: Path | None = None
    eval: Path | None = None
    train: Path | None = None
    calibration_samples: int = 256
    eval_samples: int | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)

    def __post_init__(self) -> None:
        if self.calibration_samples <= 0:
            raise RecipeError(f"data.calibration_samples must be positive, got {self.calibration_samples}.", "Use e.g. 256.")
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise RecipeError(f"data.eval_samples must be positive, got {self.eval_samples}.", "Leave it out to use every sample.")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``passes`` holds ``(kind, options)`` pairs in order."""

    target: str = "host"
    input_specs: tuple[InputSpec, ...] = ()
    arch: str | None = None
    opset: int = 18
    exporter: str = "auto"
    tune_trials: int = 0
    threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    passes: tuple[tuple[str, dict[str, Any]], ...] = ()

    def __post_init__(self) -> None:
        if self.tune_trials < 0:
            raise RecipeError(f"tune_trials must be >= 0, got {self.tune_trials}.", "Use 0 to skip tuning.")
        if self.threads < 0:
            raise RecipeError(f"threads must be >= 0, got {self.threads}.", "Use 0 for the target's default.")

    def with_overrides(self, **overrides: Any) -> "Recipe":
        """Command-line flags win over the recipe; ``None`` means "not given"."""
        data_keys = {"calibration", "eval", "train"}
        data_over = {k: v for k, v in overrides.items() if k in data_keys and v is not None}
        top = {k: v for k, v in overrides.items() if k not in data_keys and v not in (None, ())}
        data = dataclasses.replace(self.data, **data_over) if data_over else self.data
        return dataclasses.replace(self, data=data, **top)

    def to_toml_dict(self) -> dict[str, Any]:
        """The recipe as plain TOML-ready data, paths absolute, so the run can be replayed anywhere here."""
        d: dict[str, Any] = {
            "target": self.target,
            "input_shape": [f"{s.name}={','.join(map(str, s.shape))}:{s.dtype}" for s in self.input_specs],
            "opset": self.opset,
            "exporter": self.exporter,
            "tune_trials": self.tune_trials,
            "threads": self.threads,
        }
        if self.arch:
            d["arch"] = self.arch
        data: dict[str, Any] = {"calibration_samples": self.data.calibration_samples}
        for key in ("calibration", "eval", "train"):
            value = getattr(self.data, key)
            if value is not None:
                data[key] = str(Path(value).resolve())
        if self.data.eval_samples is not None:
            data["eval_samples"] = self.data.eval_samples
        data["preprocess"] = self.data.preprocess.to_dict()
        d["data"] = data
        d["passes"] = [{"kind": kind, **options} for kind, options in self.passes]
        return d


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RecipeError(f"Unknown key(s) {unknown} in {where}.", f"Allowed keys there: {', '.join(sorted(allowed))}.")


def _path(value: Any, base: Path, key: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise RecipeError(f"data.{key} must be a path string, got {type(value).__name__}.", "Quote the path.")
    p = Path(value)
    return p if p.is_absolute() else (base / p).resolve()


def _preprocess(table: dict) -> Preprocess:
    _check_keys(table, _PREPROCESS_KEYS, "[data.preprocess]")

    def floats(v: Any) -> tuple[float, ...]:
        return tuple(float(x) for x in (v if isinstance(v, list) else [v]))

    try:
        return Preprocess(
            size=int(table.get("size", 0)),
            mean=floats(table.get("mean", 0.0)),
            std=floats(table.get("std", 1.0)),
            layout=table.get("layout", "NCHW"),
            scale=float(table.get("scale", 1.0 / 255.0)),
        )
    except DataError as e:
        raise RecipeError(f"Invalid [data.preprocess]: {e.problem}", e.fix) from e
    except (TypeError, ValueError) as e:
        raise RecipeError(f"Invalid value in [data.preprocess]: {e}", "size is an integer; mean and std are numbers or lists.") from e


def parse_recipe(raw: dict[str, Any], base: Path) -> Recipe:
    """Validate a recipe already parsed from TOML; ``base`` is the folder relative paths start from."""
    from repfx_deploy.passes.registry import check_pass_kind

    _check_keys(raw, _TOP_KEYS, "the recipe's top level")
    data_raw = raw.get("data", {})
    if not isinstance(data_raw, dict):
        raise RecipeError("[data] must be a table.", "Write it as [data] with calibration/eval/train keys.")
    _check_keys(data_raw, _DATA_KEYS, "[data]")
    shapes = raw.get("input_shape", [])
    shapes = [shapes] if isinstance(shapes, str) else list(shapes)
    passes = []
    for i, entry in enumerate(raw.get("passes", [])):
        if not isinstance(entry, dict) or "kind" not in entry:
            raise RecipeError(f"[[passes]] entry {i} has no kind.", "Give every [[passes]] entry a kind, e.g. kind = \"prune\".")
        options = {k: v for k, v in entry.items() if k != "kind"}
        check_pass_kind(str(entry["kind"]))
        passes.append((str(entry["kind"]), options))
    try:
        data = DataConfig(
            calibration=_path(data_raw.get("calibration"), base, "calibration"),
            eval=_path(data_raw.get("eval"), base, "eval"),
            train=_path(data_raw.get("train"), base, "train"),
            calibration_samples=int(data_raw.get("calibration_samples", 256)),
            eval_samples=int(data_raw["eval_samples"]) if "eval_samples" in data_raw else None,
            preprocess=_preprocess(data_raw.get("preprocess", {})),
        )
        return Recipe(
            target=str(raw.get("target", "host")),
            input_specs=parse_input_shapes(shapes),
            arch=raw.get("arch"),
            opset=int(raw.get("opset", 18)),
            exporter=str(raw.get("exporter", "auto")),
            tune_trials=int(raw.get("tune_trials", 0)),
            threads=int(raw.get("threads", 0)),
            data=data,
            passes=tuple(passes),
        )
    except (TypeError, ValueError) as e:
        raise RecipeError(f"A recipe value has the wrong type: {e}", "Check numbers are numbers and paths are strings.") from e


def load_recipe(path: Path | None) -> Recipe:
    """Read the recipe at ``path``; ``None`` gives the default (empty) recipe."""
    if path is None:
        return Recipe()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise RecipeError(f"The recipe {str(path)!r} does not exist.", "Check the --recipe path.") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"The recipe {str(path)!r} is not valid TOML: {e}", "Fix the syntax at the position given.") from e
    return parse_recipe(raw, path.resolve().parent)


def dump_recipe(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_toml_dict())
