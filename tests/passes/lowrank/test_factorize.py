"""Factorizing one layer: exact at full rank, the best rank-r approximation below it, costs as counted."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from repfx_deploy.passes.lowrank.factorize import (
    Factorized,
    LayerShape,
    factorize,
    singular_values,
    weight_matrix,
)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank_reproduces_layer(bias):
    torch.manual_seed(0)
    layer = nn.Linear(12, 7, bias=bias)
    pair = factorize(layer, "linear", 7)
    x = torch.randn(5, 3, 12)
    assert isinstance(pair, Factorized) and pair.rank == 7
    assert torch.allclose(pair(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=5, out_channels=7, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=False),
        dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=2, dilation=2),
    ],
)
def test_conv_full_rank_reproduces_layer_with_stride_padding_dilation(scheme, conv):
    torch.manual_seed(0)
    layer = nn.Conv2d(**conv)
    full = LayerShape("conv", layer.in_channels, layer.out_channels, *layer.kernel_size).full_rank(scheme)
    pair = factorize(layer, scheme, full)
    x = torch.randn(2, layer.in_channels, 11, 13)
    assert pair(x).shape == layer(x).shape
    assert torch.allclose(pair(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_truncation_error_equals_discarded_singular_values(scheme):
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 16, 3, padding=1)
    s = singular_values(layer.weight, scheme)
    pair = factorize(layer, scheme, 4)
    err = torch.linalg.matrix_norm(pair.effective_matrix().double() - weight_matrix(layer.weight.double(), scheme))
    assert err.item() == pytest.approx(float((s[4:] ** 2).sum().sqrt()), rel=1e-4)


def test_spatial_pair_is_a_vertical_then_horizontal_conv():
    pair = factorize(nn.Conv2d(4, 6, (3, 5), stride=(2, 3), padding=(1, 2)), "spatial", 3)
    assert pair[0].kernel_size == (3, 1) and pair[0].stride == (2, 1) and pair[0].padding == (1, 0)
    assert pair[1].kernel_size == (1, 5) and pair[1].stride == (1, 3) and pair[1].padding == (0, 2)


def test_factorize_raises_value_error_for_grouped_conv_bad_scheme_or_rank():
    with pytest.raises(ValueError, match="ungrouped"):
        factorize(nn.Conv2d(4, 4, 3, groups=4), "channel", 1)
    with pytest.raises(ValueError, match="scheme"):
        factorize(nn.Linear(4, 4), "channel", 1)
    with pytest.raises(ValueError, match="rank"):
        factorize(nn.Linear(4, 4), "linear", 5)


def test_layer_shape_costs_match_the_built_pair():
    layer = nn.Conv2d(16, 32, 3, padding=1)
    shape = LayerShape("conv", 16, 32, 3, 3, True, positions=64, mid_positions=64)
    for scheme in ("channel", "spatial"):
        pair = factorize(layer, scheme, 5)
        assert shape.params(scheme, 5) == sum(p.numel() for p in pair.parameters())
    assert shape.dense_params() == sum(p.numel() for p in layer.parameters())


def test_max_useful_rank_is_zero_when_no_rank_is_cheaper():
    assert LayerShape("linear", 16, 4).max_useful_rank("linear") == 3  # 3 * 20 < 64, 4 * 20 > 64
    assert LayerShape("linear", 2, 2).max_useful_rank("linear") == 0


@pytest.mark.parametrize(
    ("layer", "scheme"),
    [
        (nn.Linear(24, 40), "linear"),
        (nn.Conv2d(6, 10, 3, padding=1), "channel"),
        (nn.Conv2d(6, 10, 3, padding=1), "spatial"),
    ],
)
def test_factorize_from_a_cached_decomposition_equals_factorizing_afresh(layer, scheme):
    from repfx_deploy.passes.lowrank.factorize import decompose

    dec = decompose(layer.weight, scheme, keep=5)
    assert dec.kept == 5 and dec.u.shape[1] == 5  # vectors kept for 5 ranks, the whole spectrum in s
    assert dec.s.shape[0] == min(weight_matrix(layer.weight, scheme).shape)
    for rank in (1, 3, 5):
        cached, fresh = factorize(layer, scheme, rank, dec), factorize(layer, scheme, rank)
        assert all(torch.equal(a, b) for a, b in zip(cached.state_dict().values(), fresh.state_dict().values()))


def test_factorize_refuses_a_decomposition_of_another_scheme():
    from repfx_deploy.passes.lowrank.factorize import decompose

    layer = nn.Conv2d(4, 6, 3)
    with pytest.raises(ValueError, match="decomposition"):
        factorize(layer, "spatial", 2, decompose(layer.weight, "channel"))
