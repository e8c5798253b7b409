"""FashionCNN: the project's default example model, a small residual CNN trained on Fashion-MNIST.

Contract:
    input   float32 tensor of shape (N, 1, 28, 28), NCHW, one grey channel. Pixels are uint8 scaled to
            [0, 1] (divide by 255) and then normalized as ``(x - MEAN) / STD``.
    output  float32 logits of shape (N, 10), one per class in ``CLASSES`` order (no softmax).

The network is shaped like an edge model that the pruning and quantization passes are meant to meet:
conv3x3-BN-ReLU stages at widths 16, 32, 64 with stride-2 downsampling, one residual block (so passes must
keep the two branches of an ``add`` consistent), global average pooling and a Linear head. It uses only
Conv2d, BatchNorm2d, ReLU, AdaptiveAvgPool2d, Flatten and Linear, so it exports to ONNX and compiles with
TVM without custom operators.

``FashionCNN()`` takes no arguments so the CLI can rebuild it from
``--arch repfx_deploy.examples.fashion_mnist:FashionCNN``; ``load_pretrained()`` returns it with the
committed weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

MEAN: float = 0.2860
STD: float = 0.3530
CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
INPUT_SHAPE: tuple[int, int, int, int] = (1, 1, 28, 28)

REPO_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_PATH = REPO_ROOT / "examples" / "fashion-mnist" / "model.pt"


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU; padding 1 so stride 1 keeps the spatial size."""
    # No conv bias: the BatchNorm shift right after makes it redundant (and BN folding cleaner).
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` with an identity shortcut; channels and size unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + x)


class FashionCNN(nn.Module):
    """(N, 1, 28, 28) normalized images -> (N, 10) logits. See the module docstring for the full contract."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, 16),  # 28x28
            conv_bn_relu(16, 32, stride=2),  # 14x14
            ResidualBlock(32),  # 14x14
            conv_bn_relu(32, 64, stride=2),  # 7x7
            conv_bn_relu(64, 64),  # 7x7
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, len(CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def load_pretrained(path: Path | None = None) -> FashionCNN:
    """Return a ``FashionCNN`` in eval mode with the committed weights (``WEIGHTS_PATH`` unless ``path``).

    The file is a plain state_dict, so it loads with ``weights_only=True`` and never unpickles code; the load
    is strict, so a file that does not match the architecture fails loudly.
    """
    from repfx_deploy.errors import ModelLoadError

    model = FashionCNN()
    source = WEIGHTS_PATH if path is None else Path(path)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler's refusal, a truncated file, a missing one
        raise ModelLoadError(
            f"Cannot read {str(source)!r} as a plain state_dict: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
            "Pass a file written by torch.save(model.state_dict(), path); pickled objects are refused.",
        ) from e
    model.load_state_dict(state, strict=True)
    return model.eval()
