"""The real CIFAR-10 ViT from ../shared/assets (skipped when absent): patched exactly, preset reached."""

from __future__ import annotations

import torch

from repfx_deploy.passes.tokens import TokensConfig
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (1, 3, 32, 32)),)


def test_cifar_vit_35_percent_preset_within_tolerance_and_cls_only_last_exact(zoo, apply_tokens):
    model = zoo.cifar10_vit().eval()
    config = TokensConfig(flops_reduction=0.35, method="merge")
    stats = apply_tokens(model, config, SPECS).extras
    assert stats["family"] == "torch" and stats["tokens_in"] == 65 and len(stats["keep"]) == 6
    assert abs(stats["flops_reduction"] - 0.35) <= config.tolerance
    assert stats["cls_only_last"]  # the head reads the class token only, so the last block computes it alone
    exact = apply_tokens(model, TokensConfig(keep=(65, 65, 65, 65, 65, 1)), SPECS).module
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exact(x), model(x), rtol=1e-4, atol=1e-5)
