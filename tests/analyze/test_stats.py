import tiny_models
import torch.nn as nn

from repfx_deploy.analyze.onnx_stats import onnx_stats
from repfx_deploy.analyze.torch_stats import torch_stats
from repfx_deploy.spec import InputSpec


def test_conv_and_linear_macs_counted_exactly():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    stats = torch_stats(model, (InputSpec("input", (1, 3, 4, 4)),))
    conv_macs = 8 * 4 * 4 * 3 * 3 * 3
    assert stats.macs == conv_macs + 128 * 5
    by_name = {layer.name: layer for layer in stats.layers}
    assert by_name["0"].macs == conv_macs and by_name["2"].macs == 640
    assert stats.params == sum(p.numel() for p in model.parameters())
    assert stats.size_bytes == 4 * stats.params


def test_attention_and_functional_matmul_counted_in_layers_that_own_them():
    stats = torch_stats(tiny_models.TinyAttention().eval(), (InputSpec("input", (1, 4, 8)),))
    names = {layer.name: layer.macs for layer in stats.layers}
    # 4 tokens, width 8, 2 heads of 4: in-projection, out-projection, then Q K^T and A V per head
    assert names["attn"] == 4 * 8 * 24 + 4 * 8 * 8 + 2 * (2 * 4 * 4 * 4)
    assert names["(top level)"] == 4 * 4 * 8 + 4 * 8 * 4  # a @ a^T then (.) @ a
    assert sum(layer.macs for layer in stats.layers) == stats.macs


def test_batchnorm_listed_with_params_and_zero_macs(tiny_conv):
    stats = torch_stats(tiny_conv, (InputSpec("input", (1, 3, 8, 8)),))
    bn = next(layer for layer in stats.layers if layer.name == "bn")
    assert bn.macs == 0 and bn.params == 16
    assert stats.outputs[0]["shape"] == [1, 4]


def test_onnx_macs_match_torch_count(tiny_conv, tiny_onnx):
    torch_count = torch_stats(tiny_conv, (InputSpec("input", (1, 3, 8, 8)),))
    onnx_count = onnx_stats(tiny_onnx)
    assert onnx_count.macs == torch_count.macs
    assert onnx_count.inputs[0]["shape"] == [1, 3, 8, 8]


def test_layers_under_uncalled_containers_not_counted_twice():
    stats = torch_stats(tiny_models.HolderNet().eval(), (InputSpec("input", (1, 4)),))
    by_name = {layer.name: layer.macs for layer in stats.layers}
    assert by_name["stem.proj"] == 32 and by_name["blocks.0"] == 64 and by_name["blocks.1"] == 64
    assert "(top level)" not in by_name
    assert sum(by_name.values()) == stats.macs == 160


def test_attention_macs_agree_between_torch_and_onnx_counts(tmp_path):
    from repfx_deploy.lower.onnx_export import export_onnx

    model = tiny_models.TinyAttention().eval()
    spec = (InputSpec("input", (1, 4, 8)),)
    path = export_onnx(model, spec, tmp_path / "attn.onnx").path
    assert onnx_stats(path).macs == torch_stats(model, spec).macs
