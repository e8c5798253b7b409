"""Each encoder family is patched with its outputs unchanged when every token is kept; others are named."""

from __future__ import annotations

import pytest
import torch
import vit_zoo

from repfx_deploy.errors import PassError
from repfx_deploy.passes.tokens import TokensConfig
from repfx_deploy.passes.tokens.adapters import patch_blocks
from repfx_deploy.spec import InputSpec

SPECS = (InputSpec("input", (2, 3, 16, 16)),)
ALL = TokensConfig(keep=(17, 17, 17))


def _image(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _hf(builder: str):
    pytest.importorskip("transformers")
    return getattr(vit_zoo, builder)()


FAMILIES = {
    "torch-post-norm": (vit_zoo.PostNormTorchViT, "torch"),
    "torch-pre-norm-seq-first": (vit_zoo.PreNormSeqFirstTorchViT, "torch"),
    "timm-block-layerscale": (vit_zoo.TimmStyleViT, "timm"),
    "hf-vit": (lambda: _hf("hf_vit"), "hf"),
    "hf-dinov2": (lambda: _hf("hf_dinov2"), "hf"),
}


def _outputs(out) -> list[torch.Tensor]:
    from repfx_deploy.measure.runtimes import _flatten

    return _flatten(out)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_keep_all_matches_original_outputs(name, apply_tokens):
    builder, family = FAMILIES[name]
    torch.manual_seed(0)
    model = builder().eval()
    result = apply_tokens(model, ALL, SPECS)
    assert result.extras["family"] == family
    assert result.macs_after >= result.macs_before * 0.99
    with torch.no_grad():
        for a, b in zip(_outputs(model(_image())), _outputs(result.module(_image()))):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_patched_model_keeps_state_dict_keys(apply_tokens):
    torch.manual_seed(0)
    model = vit_zoo.PostNormTorchViT().eval()
    result = apply_tokens(model, TokensConfig(flops_reduction=0.3, method="merge"), SPECS)
    assert result.module.state_dict().keys() == model.state_dict().keys()


def test_original_model_left_untouched(apply_tokens):
    model = vit_zoo.TimmStyleViT().eval()
    apply_tokens(model, TokensConfig(keep=(15, 13, 1)), SPECS)
    assert type(model.blocks[0]) is vit_zoo.Block


def test_unsupported_block_error_names_module():
    with pytest.raises(PassError, match=r"'stages\.0' \(HandRolledBlock\).*'stages\.0\.mha'"):
        patch_blocks(vit_zoo.UnsupportedBlockViT())


def test_model_without_attention_error_names_model(tiny_conv):
    with pytest.raises(PassError, match="No transformer block found in TinyConvNet"):
        patch_blocks(tiny_conv)


def test_attention_mask_refused_at_run_time(apply_tokens):
    model = vit_zoo.PostNormTorchViT().eval()
    result = apply_tokens(model, TokensConfig(keep=(15, 13, 1)), SPECS)
    with pytest.raises(ValueError, match="masks are not supported"):
        result.module.encoder.layers[0](torch.zeros(1, 17, 32), src_mask=torch.zeros(17, 17))
