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
from typing import TYPE_CHECKING, Any, Literal

from repfx_deploy.data.preprocess import Preprocess
from repfx_deploy.errors import DataError, InputShapeError, RecipeError
from repfx_deploy.spec import InputSpec, parse_input_shapes

if TYPE_CHECKING:
    from repfx_deploy.passes.protocol import PassConfig

_TOP_KEYS = {"target", "input_shape", "arch", "opset", "exporter", "tune_trials", "threads", "data", "passes"}
_DATA_KEYS = {"calibration", "eval", "train", "calibration_samples", "eval_samples", "preprocess"}
_PREPROCESS_KEYS = {"size", "mean", "std", "layout", "scale"}
MAX_THREADS = 1024  # no CPU this runs on has more; a larger count overflows the runtimes' thread pools


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
            raise RecipeError(
                f"data.calibration_samples must be positive, got {self.calibration_samples}.", "Use e.g. 256."
            )
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise RecipeError(
                f"data.eval_samples must be positive, got {self.eval_samples}.", "Leave it out to use every sample."
            )


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``passes`` holds each pass's typed config, in order."""

    target: str = "host"
    input_specs: tuple[InputSpec, ...] = ()
    arch: str | None = None
    opset: int = 18
    exporter: str = "auto"
    tune_trials: int = 0
    threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    passes: tuple[PassConfig, ...] = ()

    def __post_init__(self) -> None:
        if self.tune_trials < 0:
            raise RecipeError(f"tune_trials must be >= 0, got {self.tune_trials}.", "Use 0 to skip tuning.")
        if not 0 <= self.threads <= MAX_THREADS:
            raise RecipeError(
                f"threads must be 0 .. {MAX_THREADS}, got {self.threads}.", "Use 0 for the target's default."
            )

    def with_overrides(self, **overrides: Any) -> Recipe:
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
        d["passes"] = [{"kind": config.kind, **config.to_table()} for config in self.passes]
        return d


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RecipeError(f"Unknown key(s) {unknown} in {where}.", f"Allowed keys there: {', '.join(sorted(allowed))}.")


def _typed(table: dict, key: str, annotation: Any, default: Any, where: str) -> Any:
    """``table[key]`` checked against ``annotation`` (``default`` when absent); ``RecipeError`` naming the key path."""
    from repfx_deploy.options import typed_value

    if key not in table:
        return default
    return typed_value(table[key], annotation, f"{where}.{key}" if where else key)


def _table(raw: dict, key: str, where: str, allowed: set[str]) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise RecipeError(
            f"{where} must be a table, got {type(value).__name__} {value!r}.", f"Write it as [{where}] with its keys."
        )
    _check_keys(value, allowed, f"[{where}]")
    return value


def _path(table: dict, key: str, base: Path) -> Path | None:
    value = _typed(table, key, str, None, "data")
    if value in (None, ""):
        return None
    p = Path(value)
    return p if p.is_absolute() else (base / p).resolve()


def _preprocess(table: dict) -> Preprocess:
    where = "data.preprocess"
    numbers = float | tuple[float, ...]

    def floats(key: str, default: float) -> tuple[float, ...]:
        v = _typed(table, key, numbers, default, where)
        return v if isinstance(v, tuple) else (v,)

    try:
        return Preprocess(
            size=_typed(table, "size", int, 0, where),
            mean=floats("mean", 0.0),
            std=floats("std", 1.0),
            layout=_typed(table, "layout", Literal["NCHW", "NHWC"], "NCHW", where),
            scale=_typed(table, "scale", float, 1.0 / 255.0, where),
        )
    except DataError as e:
        raise RecipeError(f"Invalid [data.preprocess]: {e.problem}", e.fix) from e


def parse_recipe(raw: dict[str, Any], base: Path) -> Recipe:
    """Validate a recipe already parsed from TOML; ``base`` is the folder relative paths start from. Every
    ``[[passes]]`` table becomes its kind's typed config here, so a bad key fails before anything runs."""
    from repfx_deploy.passes.registry import parse_pass

    _check_keys(raw, _TOP_KEYS, "the recipe's top level")
    data_raw = _table(raw, "data", "data", _DATA_KEYS)
    pre_raw = _table(data_raw, "preprocess", "data.preprocess", _PREPROCESS_KEYS)
    shapes = _typed(raw, "input_shape", str | tuple[str, ...], (), "")
    shapes = [shapes] if isinstance(shapes, str) else list(shapes)
    try:
        input_specs = parse_input_shapes(shapes)
    except InputShapeError as e:
        raise RecipeError(
            f"input_shape: {e.problem}", 'Fix input_shape in the recipe, e.g. input_shape = "1,3,32,32".'
        ) from e
    entries = raw.get("passes", [])
    if not isinstance(entries, list):
        raise RecipeError(
            f"passes must be an array of tables, got {type(entries).__name__} {entries!r}.",
            'Write each pass as [[passes]] with kind = "...".',
        )
    passes = tuple(parse_pass(entry, i) for i, entry in enumerate(entries))
    data = DataConfig(
        calibration=_path(data_raw, "calibration", base),
        eval=_path(data_raw, "eval", base),
        train=_path(data_raw, "train", base),
        calibration_samples=_typed(data_raw, "calibration_samples", int, 256, "data"),
        eval_samples=_typed(data_raw, "eval_samples", int, None, "data"),
        preprocess=_preprocess(pre_raw),
    )
    return Recipe(
        target=_typed(raw, "target", str, "host", ""),
        input_specs=input_specs,
        arch=_typed(raw, "arch", str, None, ""),
        opset=_typed(raw, "opset", int, 18, ""),
        exporter=_typed(raw, "exporter", Literal["auto", "dynamo", "torchscript"], "auto", ""),
        tune_trials=_typed(raw, "tune_trials", int, 0, ""),
        threads=_typed(raw, "threads", int, 0, ""),
        data=data,
        passes=passes,
    )


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
        raise RecipeError(
            f"The recipe {str(path)!r} is not valid TOML: {e}", "Fix the syntax at the position given."
        ) from e
    return parse_recipe(raw, path.resolve().parent)


def dump_recipe(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_toml_dict())
