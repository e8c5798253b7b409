import pytest
import tiny_models
import torch

from repfx_deploy.errors import InputShapeError, ModelLoadError, UntrustedPickleError
from repfx_deploy.ingest.loader import LoadOptions, load_model
from repfx_deploy.spec import InputSpec

SHAPE = (InputSpec("input", (1, 3, 8, 8)),)


def _opts(fixtures_dir, arch="tiny_models:TinyConvNet", **kw):
    return LoadOptions(arch=arch, python_path=(fixtures_dir,), input_specs=SHAPE, **kw)


def test_state_dict_loads_when_arch_given(tiny_state_dict, fixtures_dir, tiny_conv):
    loaded = load_model(tiny_state_dict, _opts(fixtures_dir))
    assert loaded.format == "torch_save" and loaded.is_torch
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(loaded.module(x), tiny_conv(x))
    assert len(loaded.sha256) == 64


def test_state_dict_loads_when_wrapped_and_prefixed(tmp_path, fixtures_dir, tiny_conv):
    path = tmp_path / "wrapped.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_conv.state_dict().items()}, "best_prec1": 90.0}, path)
    loaded = load_model(path, _opts(fixtures_dir))
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(loaded.module(x), tiny_conv(x))


def test_state_dict_refused_when_arch_missing(tiny_state_dict):
    with pytest.raises(ModelLoadError, match="--arch"):
        load_model(tiny_state_dict, LoadOptions(input_specs=SHAPE))


def test_state_dict_refused_when_weights_do_not_fit(tiny_state_dict, fixtures_dir):
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(tiny_state_dict, _opts(fixtures_dir, arch="tiny_models:TinyAttention"))


def test_pickled_module_refused_without_opt_in(tmp_path, tiny_conv):
    path = tmp_path / "whole.pt"
    torch.save(tiny_conv, path)
    with pytest.raises(UntrustedPickleError, match="runs whatever code"):
        load_model(path, LoadOptions(input_specs=SHAPE))


def test_pickled_module_loads_when_trusted(tmp_path, tiny_conv):
    path = tmp_path / "whole.pt"
    torch.save(tiny_conv, path)
    loaded = load_model(path, LoadOptions(input_specs=SHAPE, trust_pickle=True))
    assert isinstance(loaded.module, tiny_models.TinyConvNet)


def test_torch_export_archive_carries_its_signature(tmp_path, tiny_conv):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny_conv, (torch.randn(1, 3, 8, 8),)), path)
    loaded = load_model(path)
    assert loaded.format == "torch_export"
    assert loaded.input_specs[0].shape == (1, 3, 8, 8)


def test_torchscript_loads_when_shape_given(tmp_path, tiny_conv):
    path = tmp_path / "m.ts"
    torch.jit.trace(tiny_conv, torch.randn(1, 3, 8, 8)).save(str(path))
    loaded = load_model(path, LoadOptions(input_specs=SHAPE))
    assert loaded.format == "torchscript"
    assert loaded.module(torch.randn(1, 3, 8, 8)).shape == (1, 4)


def test_onnx_signature_read_from_graph(tiny_onnx):
    loaded = load_model(tiny_onnx)
    assert loaded.format == "onnx" and not loaded.is_torch
    assert loaded.input_specs == (InputSpec("input", (1, 3, 8, 8)),)


@pytest.mark.parametrize(
    ("content", "name", "match"),
    [(b"", "empty.pt", "empty"), (b"not a model at all", "junk.bin", "Cannot tell"), (b"PK\x03\x04garbage", "bad.pt", "Cannot|corrupt")],
)
def test_corrupt_file_refused_with_clear_error(tmp_path, content, name, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        load_model(path, LoadOptions(input_specs=SHAPE))


def test_missing_file_refused():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("/nonexistent/model.pt")


def test_truncated_state_dict_refused(tmp_path, tiny_state_dict, fixtures_dir):
    path = tmp_path / "cut.pt"
    path.write_bytes(tiny_state_dict.read_bytes()[:200])
    with pytest.raises(ModelLoadError):
        load_model(path, _opts(fixtures_dir))


def test_wrong_input_shape_refused(tiny_state_dict, fixtures_dir):
    with pytest.raises(InputShapeError, match="does not accept"):
        load_model(tiny_state_dict, LoadOptions(arch="tiny_models:TinyConvNet", python_path=(fixtures_dir,), input_specs=(InputSpec("input", (1, 5, 8, 8)),)))


def test_missing_input_shape_refused(tiny_state_dict, fixtures_dir):
    with pytest.raises(InputShapeError, match="--input-shape"):
        load_model(tiny_state_dict, LoadOptions(arch="tiny_models:TinyConvNet", python_path=(fixtures_dir,)))


@pytest.mark.parametrize(
    ("arch", "match"),
    [("no_such_module:X", "Cannot import"), ("tiny_models:Nope", "no attribute"), ("tiny_models:NotAModule", "not an nn.Module"),
     ("tiny_models:needs_arguments", "no arguments"), ("tiny_models", "module:callable")],
)
def test_bad_arch_refused_with_clear_error(tiny_state_dict, fixtures_dir, arch, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(tiny_state_dict, _opts(fixtures_dir, arch=arch))
