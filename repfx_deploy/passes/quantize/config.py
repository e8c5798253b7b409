"""The quantize pass's options, validated once into a frozen config.

Recipe keys (``[[passes]] kind = "quantize"``)::

    mode = "ptq"                 # ptq | qat (qat = ptq, then LSQ fine-tuning with distillation from the float model)
    weight_bits = 8              # 8 | 4: per-channel symmetric weights
    activation_bits = 8          # 8: per-tensor asymmetric uint8 activations (what ONNX Runtime's VNNI kernels take)
    calibration_method = "mse"   # minmax | percentile | mse: how activation ranges are chosen
    percentile = 99.99           # for calibration_method = "percentile"
    weight_method = "mse"        # minmax | mse: per-channel weight clipping
    layer_bits = { "layer1.0.conv1" = 4, "linear" = "float" }   # per-layer overrides: 8, 4 or "float"
    quantize_add = true          # quantize residual adds too, so ONNX Runtime runs them as QLinearAdd
    equalize = false             # cross-layer equalization of conv -> relu -> conv chains before quantizing
    bias_correction = true       # correct the per-channel mean shift quantization causes in each layer's output
    size_budget_bytes = 0        # > 0: mixed precision chooses int8 / int4 / float per layer within this budget
    finetune_epochs = 1.0        # qat: epochs over the train data (calibration data when no train data is given)
    finetune_steps = 0           # qat: > 0 overrides finetune_epochs
    finetune_lr = 2e-5, finetune_batch_size = 64, checkpoint = "qat.ckpt"   # qat, resumable
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from repfx_deploy.errors import RecipeError

Mode = Literal["ptq", "qat"]
Method = Literal["minmax", "percentile", "mse"]
WeightMethod = Literal["minmax", "mse"]
LayerBits = Literal[8, 4, "float"]

MODES = ("ptq", "qat")
METHODS = ("minmax", "percentile", "mse")
WEIGHT_METHODS = ("minmax", "mse")
LAYER_CHOICES = (8, 4, "float")


@dataclass(frozen=True)
class QuantizeConfig:
    """Validated quantize options; ``layer_bits`` is a tuple of ``(layer name, 8 | 4 | "float")`` pairs."""

    mode: Mode = "ptq"
    weight_bits: int = 8
    activation_bits: int = 8
    calibration_method: Method = "mse"
    percentile: float = 99.99
    weight_method: WeightMethod = "mse"
    layer_bits: tuple[tuple[str, LayerBits], ...] = ()
    quantize_add: bool = True
    equalize: bool = False
    bias_correction: bool = True  # measured to help on every CIFAR model here (README, Quantization)
    size_budget_bytes: int = 0
    finetune_epochs: float = 1.0
    finetune_steps: int = 0
    # Adam moves every tensor by about lr per step whatever its gradient's size: 2e-5 is ~0.05 % of a typical
    # weight or step size, gentle enough not to undo the pretrained model in a short fine-tune
    finetune_lr: float = 2e-5
    finetune_batch_size: int = 64
    checkpoint: Path | None = None
    calibration_batch_size: int = 32
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, fix: str) -> RecipeError:
            return RecipeError(f"quantize: {key} = {value!r} is not valid.", fix)

        if self.mode not in MODES:
            raise bad("mode", self.mode, f"Use one of: {', '.join(MODES)}.")
        if self.weight_bits not in (8, 4) or isinstance(self.weight_bits, bool):
            raise bad("weight_bits", self.weight_bits, "Use 8 or 4 (int4 weights are stored in int8 containers, see README).")
        if self.activation_bits != 8 or isinstance(self.activation_bits, bool):
            raise bad("activation_bits", self.activation_bits, "Use 8: ONNX Runtime's integer kernels take 8-bit activations only.")
        if self.calibration_method not in METHODS:
            raise bad("calibration_method", self.calibration_method, f"Use one of: {', '.join(METHODS)}.")
        if not 90.0 <= self.percentile < 100.0:
            raise bad("percentile", self.percentile, "Use a value in [90, 100), e.g. 99.99.")
        if self.weight_method not in WEIGHT_METHODS:
            raise bad("weight_method", self.weight_method, f"Use one of: {', '.join(WEIGHT_METHODS)}.")
        for name, bits in self.layer_bits:
            if not isinstance(name, str) or not name:
                raise bad("layer_bits", name, "Keys are layer names as `repfx-deploy inspect` lists them.")
            if bits not in LAYER_CHOICES or isinstance(bits, bool):
                raise bad(f"layer_bits.{name}", bits, 'Use 8, 4 or "float".')
        for key in ("quantize_add", "equalize", "bias_correction", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, getattr(self, key), "Use true or false.")
        if self.size_budget_bytes < 0:
            raise bad("size_budget_bytes", self.size_budget_bytes, "Use 0 (no mixed precision) or a positive byte count.")
        if self.finetune_epochs <= 0 or self.finetune_steps < 0:
            raise bad("finetune_epochs/finetune_steps", (self.finetune_epochs, self.finetune_steps), "Use epochs > 0 and steps >= 0.")
        if self.finetune_lr <= 0 or self.finetune_batch_size < 1 or self.calibration_batch_size < 1:
            raise bad("finetune_lr/batch sizes", (self.finetune_lr, self.finetune_batch_size), "Use a positive rate and batch sizes.")

    @property
    def layer_overrides(self) -> dict[str, LayerBits]:
        return dict(self.layer_bits)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, base_dir: Path | None = None) -> "QuantizeConfig":
        """The config for a recipe table (without ``kind``); ``RecipeError`` for unknown keys or bad values."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise RecipeError(f"quantize: unknown option(s) {', '.join(unknown)}.", f"Use only: {', '.join(sorted(allowed))}.")
        values = dict(options)
        if "layer_bits" in values:
            table = values["layer_bits"]
            if not isinstance(table, Mapping):
                raise RecipeError(f"quantize: layer_bits must be a table, got {table!r}.", 'Write layer_bits = { "conv1" = 4 }.')
            values["layer_bits"] = tuple(sorted((str(k), v) for k, v in table.items()))
        if values.get("checkpoint") is not None:
            path = Path(values["checkpoint"])
            values["checkpoint"] = path if path.is_absolute() or base_dir is None else base_dir / path
        try:
            return cls(**values)
        except TypeError as e:
            raise RecipeError(f"quantize: bad option value: {e}", "Check the option types in the recipe.") from e
