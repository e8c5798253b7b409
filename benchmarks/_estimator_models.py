"""Models for benchmarks/estimator.py: a varied host zoo, and the Pixel 1 table's architectures.

The Pixel 1 models are written here from their papers (timm's definitions would do, but timm needs a
torchvision build matching the CPU torch wheel, which the registries here do not have):
MobileNetV1 (Howard et al. 2017), MobileNetV2 with width multipliers (Sandler et al. 2018), and NASNet-A Mobile
"4 @ 1056" (Zoph et al. 2018: 32-filter stem, two reduction stem cells, 3 x 4 normal cells of 44/88/176 filters).
Weights are random: latency does not depend on them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cbr(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


# ---------------------------------------------------------------- host zoo
def mlp(inp: int, width: int, depth: int, classes: int = 10) -> nn.Module:
    layers, c = [], inp
    for _ in range(depth):
        layers += [nn.Linear(c, width), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.Linear(c, classes))


def plain_cnn(width: int, depth: int, k: int, cin: int = 3, groups: int = 1) -> nn.Module:
    """``depth`` conv-BN-ReLU layers of kernel ``k``; width doubles and resolution halves every 2 layers."""
    layers, c = [_cbr(cin, width, 3)], width
    for i in range(depth - 1):
        stride = 2 if i % 2 == 1 else 1
        out = c * 2 if stride == 2 else c
        layers.append(_cbr(c, out, k, stride, groups=groups if c % groups == 0 and out % groups == 0 else 1))
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def dw_separable(width: int, blocks: int, cin: int = 3) -> nn.Module:
    """MobileNetV1-style: depthwise 3x3 + pointwise 1x1 blocks, stride 2 every other block."""
    layers, c = [_cbr(cin, width, 3, 2)], width
    for i in range(blocks):
        stride = 2 if i % 2 == 1 else 1
        out = c * 2 if stride == 2 else c
        layers += [_cbr(c, c, 3, stride, groups=c), _cbr(c, out, 1)]
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_cbr(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_cbr(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def mobilenet_v2(width: float = 1.0, classes: int = 1000, setting=None, stem: int = 32, last: int = 1280) -> nn.Module:
    setting = setting or [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    c = _divisible(stem * width)
    last_c = _divisible(last * max(1.0, width))
    layers: list[nn.Module] = [_cbr(3, c, 3, 2, act=nn.ReLU6)]
    for t, ch, n, s in setting:
        out = _divisible(ch * width)
        for i in range(n):
            layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
            c = out
    layers += [_cbr(c, last_c, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last_c, classes)]
    return nn.Sequential(*layers)


def mobilenet_v1(width: float = 1.0, classes: int = 1000) -> nn.Module:
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    c = int(32 * width)
    layers: list[nn.Module] = [_cbr(3, c, 3, 2)]
    for ch, s in cfg:
        out = int(ch * width)
        layers += [_cbr(c, c, 3, s, groups=c), _cbr(c, out, 1)]
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


class TinyViT(nn.Module):
    """Patch embedding, ``depth`` pre-norm transformer blocks (GELU MLP), mean pooling, linear head."""

    def __init__(self, res: int, patch: int, dim: int, depth: int, heads: int, cin: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv2d(cin, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (res // patch) ** 2, dim))
        block = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.blocks(x).mean(1))


def host_zoo() -> dict[str, tuple[callable, tuple[int, ...]]]:
    """name -> (builder, batch-1 input shape). Varies width, depth, kernel, resolution, dense vs depthwise."""
    return {
        "mlp-w128-d2": (lambda: mlp(256, 128, 2), (1, 256)),
        "mlp-w512-d4": (lambda: mlp(784, 512, 4), (1, 784)),
        "mlp-w1024-d3": (lambda: mlp(1024, 1024, 3), (1, 1024)),
        "cnn-w16-d4-k3-r32": (lambda: plain_cnn(16, 4, 3), (1, 3, 32, 32)),
        "cnn-w32-d6-k3-r32": (lambda: plain_cnn(32, 6, 3), (1, 3, 32, 32)),
        "cnn-w64-d4-k3-r32": (lambda: plain_cnn(64, 4, 3), (1, 3, 32, 32)),
        "cnn-w16-d3-k5-r64": (lambda: plain_cnn(16, 3, 5), (1, 3, 64, 64)),
        "cnn-w32-d3-k7-r32": (lambda: plain_cnn(32, 3, 7), (1, 3, 32, 32)),
        "cnn-w8-d8-k3-r64": (lambda: plain_cnn(8, 8, 3), (1, 3, 64, 64)),
        "cnn-w64-d6-k1-r16": (lambda: plain_cnn(64, 6, 1), (1, 3, 16, 16)),
        "cnn-w32-d5-k3-g4-r32": (lambda: plain_cnn(32, 5, 3, groups=4), (1, 3, 32, 32)),
        "dws-w32-b4-r32": (lambda: dw_separable(32, 4), (1, 3, 32, 32)),
        "dws-w64-b6-r64": (lambda: dw_separable(64, 6), (1, 3, 64, 64)),
        "mbv2-0.5-r64": (lambda: mobilenet_v2(0.5, 10), (1, 3, 64, 64)),
        "mbv2-1.0-r96": (lambda: mobilenet_v2(1.0, 10), (1, 3, 96, 96)),
        "mbv1-0.25-r128": (lambda: mobilenet_v1(0.25, 10), (1, 3, 128, 128)),
        "vit-d64-l2-p8-r32": (lambda: TinyViT(32, 8, 64, 2, 4), (1, 3, 32, 32)),
        "vit-d128-l4-p4-r32": (lambda: TinyViT(32, 4, 128, 4, 4), (1, 3, 32, 32)),
        "vit-d96-l3-p4-r16": (lambda: TinyViT(16, 4, 96, 3, 3), (1, 3, 16, 16)),
        "cnn-w24-d6-k5-r48": (lambda: plain_cnn(24, 6, 5), (1, 3, 48, 48)),
    }


# ---------------------------------------------------------------- NASNet-A Mobile
class _SepStack(nn.Module):
    """NASNet's separable op: twice (ReLU, depthwise kxk, pointwise 1x1, BN); the first with the stride."""

    def __init__(self, c: int, k: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
            nn.ReLU(), nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return self.ops(x)


def _op(name: str, c: int, stride: int) -> nn.Module:
    if name.startswith("sep"):
        return _SepStack(c, int(name[3]), stride)
    if name == "avg":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "max":
        return nn.MaxPool2d(3, stride, 1)
    if stride > 1:  # identity that must change resolution
        return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1, stride, bias=False), nn.BatchNorm2d(c))
    return nn.Identity()


class _FactorizedReduce(nn.Module):
    """Halves the resolution of the previous-previous state: two shifted stride-2 1x1 paths, concatenated."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.b = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(x)
        a = self.a(F.avg_pool2d(x, 1, 2))
        b = self.b(F.avg_pool2d(F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:], 1, 2))
        return self.bn(torch.cat([a, b], 1))


# (op on state, op on state) per block, state indices: 0 = previous-previous, 1 = previous, 2.. = block outputs
_NORMAL = [(("sep5", 1), ("sep3", 0)), (("sep5", 0), ("sep3", 0)), (("avg", 1), ("none", 0)),
           (("avg", 0), ("avg", 0)), (("sep3", 1), ("none", 1))]
_REDUCE = [(("sep5", 1), ("sep7", 0)), (("max", 1), ("sep7", 0)), (("avg", 1), ("sep5", 0)),
           (("none", 3), ("avg", 2)), (("sep3", 2), ("max", 1))]


class _Cell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, reduce: bool, pp_halves: bool) -> None:
        super().__init__()
        self.reduce = reduce
        self.pre_pp = _FactorizedReduce(c_pp, c) if pp_halves else nn.Sequential(nn.ReLU(), nn.Conv2d(c_pp, c, 1, bias=False), nn.BatchNorm2d(c))
        self.pre_p = nn.Sequential(nn.ReLU(), nn.Conv2d(c_p, c, 1, bias=False), nn.BatchNorm2d(c))
        spec = _REDUCE if reduce else _NORMAL
        self.spec = [(a[1], b[1]) for a, b in spec]
        self.ops = nn.ModuleList(
            nn.ModuleList(_op(name, c, 2 if reduce and idx < 2 else 1) for name, idx in pair) for pair in spec
        )
        used = {i for pair in self.spec for i in pair}
        self.concat = [i for i in range(2, 7) if i not in used] + ([] if reduce else [1])
        self.out_channels = c * len(self.concat)

    def forward(self, pp, p):
        states = [self.pre_pp(pp), self.pre_p(p)]
        for (ia, ib), (op_a, op_b) in zip(self.spec, self.ops):
            states.append(op_a(states[ia]) + op_b(states[ib]))
        return torch.cat([states[i] for i in self.concat], 1)


class NASNetAMobile(nn.Module):
    """NASNet-A Mobile (4 @ 1056), 224x224 input; about 564 M MACs and 5.3 M parameters in the paper."""

    def __init__(self, filters: int = 44, cells: int = 4, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 0, bias=False), nn.BatchNorm2d(32))
        plan = [(filters // 4, True), (filters // 2, True)]
        for stage in range(3):
            if stage:
                plan.append((filters * 2 ** stage, True))
            plan += [(filters * 2 ** stage, False)] * cells
        self.cells = nn.ModuleList()
        c_pp, c_p, halves_next = 32, 32, False
        for i, (c, reduce) in enumerate(plan):
            cell = _Cell(c_pp, c_p, c, reduce, pp_halves=halves_next and i > 0)
            self.cells.append(cell)
            halves_next = reduce
            c_pp, c_p = c_p, cell.out_channels
        self.head = nn.Linear(c_p, classes)

    def forward(self, x):
        pp = p = self.stem(x)
        for cell in self.cells:
            pp, p = p, cell(pp, p)
        return self.head(F.adaptive_avg_pool2d(F.relu(p), 1).flatten(1))


# name -> (builder, published MACs, published latency ms), MobileNetV2 paper Table 4 (TF-Lite, one Pixel 1 core)
PIXEL1_TABLE = {
    "MobileNetV1 1.0": (lambda: mobilenet_v1(1.0), 575e6, 113.0),
    "NASNet-A": (lambda: NASNetAMobile(), 564e6, 183.0),
    "MobileNetV2 1.0": (lambda: mobilenet_v2(1.0), 300e6, 75.0),
    "MobileNetV2 1.4": (lambda: mobilenet_v2(1.4), 585e6, 143.0),
}
