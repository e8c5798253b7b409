"""The quantize pass's config: a frozen dataclass whose field annotations are its recipe schema.

Recipe keys (``[[passes]] kind = "quantize"``)::

    mode = "ptq"                 # ptq | qat (qat = ptq, then LSQ fine-tuning with distillation from the float model)
    weight_bits = 8              # 8 | 4: per-channel symmetric weights, every layer layer_bits does not name
    activation_bits = 8          # 8: per-tensor asymmetric uint8 activations (what ONNX Runtime's VNNI kernels take)
    calibration_method = "mse"   # minmax | percentile | mse: how activation ranges are chosen
    percentile = 99.99           # for calibration_method = "percentile"
    weight_method = "mse"        # minmax | mse: per-channel weight clipping
    layer_bits = { "layer1.0.conv1" = 4, "linear" = "float" }   # per layer, by exact name: 8, 4 or "float"
    quantize_add = true          # quantize residual adds too, so ONNX Runtime runs them as QLinearAdd
    equalize = false             # cross-layer equalization of conv -> relu -> conv chains before quantizing
    bias_correction = true       # correct the per-channel mean shift quantization causes in each layer's output
    bias_correction_samples = 64 # measured on the first 64 calibration samples (whole batches; 0: all of them)
    size_budget_bytes = 0        # > 0: mixed precision chooses int8 / int4 / float per layer within this budget
    calibration_batch_size = 32
    # mode = "qat" only: QAT trains the quantizers themselves, so these belong to this pass, not to "recover"
    finetune_epochs = 1.0        # epochs over the train data (calibration data when no train data is given)
    finetune_steps = 0           # > 0 overrides finetune_epochs
    finetune_lr = 2e-5, finetune_batch_size = 64, checkpoint = "qat.ckpt", seed = 0, progress = false

``layer_bits`` is the pass's explicit per-site field: ``with_assignment`` sets it for every layer of the space.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from repfx_deploy.passes.protocol import Assignment, PassConfig

Mode = Literal["ptq", "qat"]
Method = Literal["minmax", "percentile", "mse"]
WeightMethod = Literal["minmax", "mse"]
LayerBits = Literal[8, 4, "float"]

MODES = ("ptq", "qat")
METHODS = ("minmax", "percentile", "mse")
WEIGHT_METHODS = ("minmax", "mse")
# a site's choices, in the order a search walks them (fewest bits first); "float" leaves the layer as it was
LAYER_CHOICES: tuple[int | str, ...] = (4, 8, "float")
# the QAT keys and their defaults: set in a PTQ pass, they would silently do nothing
QAT_DEFAULTS = {
    "finetune_epochs": 1.0,
    "finetune_steps": 0,
    "finetune_lr": 2e-5,
    "finetune_batch_size": 64,
    "checkpoint": None,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class QuantizeConfig(PassConfig):
    """Validated quantize options (the module docstring lists them); ``layer_bits`` is a tuple of
    ``(layer name, 8 | 4 | "float")`` pairs, kept sorted by name so equal recipes give equal configs."""

    kind = "quantize"

    mode: Mode = "ptq"
    weight_bits: Literal[8, 4] = 8
    activation_bits: Literal[8] = 8
    calibration_method: Method = "mse"
    percentile: float = 99.99
    weight_method: WeightMethod = "mse"
    layer_bits: tuple[tuple[str, LayerBits], ...] = ()
    quantize_add: bool = True
    equalize: bool = False
    bias_correction: bool = True  # measured to help on every CIFAR model here (docs, quantize)
    # Each assignment pays one quantized pass over these samples, the only per-assignment cost that grows with
    # data; a per-channel mean over 64 images (>= 4,096 positions per channel at 8x8) is already steady.
    bias_correction_samples: int = 64
    size_budget_bytes: int = 0
    calibration_batch_size: int = 32
    finetune_epochs: float = 1.0
    finetune_steps: int = 0
    # Adam moves every tensor by about lr per step whatever its gradient's size: 2e-5 is ~0.05 % of a typical
    # weight or step size, gentle enough not to undo the pretrained model in a short fine-tune
    finetune_lr: float = 2e-5
    finetune_batch_size: int = 64
    checkpoint: Path | None = None
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        # the recipe parser checks types and Literal choices; these checks also cover configs built in Python
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        if self.weight_bits not in (8, 4) or not _is_int(self.weight_bits):
            raise ValueError(
                f"weight_bits must be 8 or 4 (int4 weights are stored in int8 containers); got {self.weight_bits!r}"
            )
        if self.activation_bits != 8 or not _is_int(self.activation_bits):
            raise ValueError(
                f"activation_bits must be 8 (ONNX Runtime's integer kernels take 8-bit activations only); got {self.activation_bits!r}"
            )
        if self.calibration_method not in METHODS:
            raise ValueError(f"calibration_method must be one of {METHODS}; got {self.calibration_method!r}")
        if not 90.0 <= self.percentile < 100.0:
            raise ValueError(f"percentile must be in [90, 100), e.g. 99.99; got {self.percentile!r}")
        if self.weight_method not in WEIGHT_METHODS:
            raise ValueError(f"weight_method must be one of {WEIGHT_METHODS}; got {self.weight_method!r}")
        names = [name for name, _ in self.layer_bits]
        for name, bits in self.layer_bits:
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"layer_bits keys must be layer names as `repfx-deploy space` lists them; got {name!r}"
                )
            if bits not in LAYER_CHOICES or isinstance(bits, bool):
                raise ValueError(f'layer_bits.{name} must be 8, 4 or "float"; got {bits!r}')
        if len(set(names)) != len(names):
            raise ValueError(f"layer_bits names a layer twice: {sorted({n for n in names if names.count(n) > 1})}")
        object.__setattr__(self, "layer_bits", tuple(sorted(self.layer_bits)))
        if not _is_int(self.size_budget_bytes) or self.size_budget_bytes < 0:
            raise ValueError(
                f"size_budget_bytes must be 0 (no mixed precision) or a positive byte count; got {self.size_budget_bytes!r}"
            )
        if not _is_int(self.bias_correction_samples) or self.bias_correction_samples < 0:
            raise ValueError(
                f"bias_correction_samples must be >= 0 (0: every calibration sample); got {self.bias_correction_samples!r}"
            )
        if self.calibration_batch_size < 1:
            raise ValueError(f"calibration_batch_size must be >= 1; got {self.calibration_batch_size}")
        if self.finetune_epochs <= 0 or self.finetune_steps < 0:
            raise ValueError(
                f"finetune_epochs must be > 0 and finetune_steps >= 0; got {self.finetune_epochs}, {self.finetune_steps}"
            )
        if self.finetune_lr <= 0 or self.finetune_batch_size < 1:
            raise ValueError(
                f"finetune_lr must be > 0 and finetune_batch_size >= 1; got {self.finetune_lr}, {self.finetune_batch_size}"
            )
        if self.mode == "ptq":
            set_keys = sorted(k for k, default in QAT_DEFAULTS.items() if getattr(self, k) != default)
            if set_keys:
                raise ValueError(
                    f'{", ".join(set_keys)} only apply with mode = "qat"; set mode = "qat" to train the quantizers, '
                    'or fine-tune after PTQ with a [[passes]] kind = "recover" entry after this one'
                )

    @property
    def layer_overrides(self) -> dict[str, int | str]:
        return dict(self.layer_bits)

    def with_assignment(self, assignment: Assignment) -> QuantizeConfig:
        """This config with ``layer_bits`` = ``assignment`` (every layer of the space, as ``complete`` gives it).
        The mixed-precision budget is dropped: the explicit bits are the choice it would otherwise make."""
        if not isinstance(assignment, Mapping):
            raise TypeError(f"an assignment is a mapping of layer name to bits; got {type(assignment).__name__}")
        # an assignment's values are untyped choices: __post_init__ checks each (a ValueError naming the layer)
        layer_bits = cast("tuple[tuple[str, LayerBits], ...]", tuple((name, bits) for name, bits in assignment.items()))
        return dataclasses.replace(self, layer_bits=layer_bits, size_budget_bytes=0)
