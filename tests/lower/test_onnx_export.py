import json

import numpy as np
import onnx
import pytest
import tiny_models
import torch

from repfx_deploy.errors import ExportError, OutputExistsError
from repfx_deploy.lower.onnx_export import ExportConfig, export_onnx
from repfx_deploy.measure.runtimes import OrtRunner, TorchRunner
from repfx_deploy.spec import InputSpec

SPEC = (InputSpec("input", (1, 3, 8, 8)),)


def test_export_matches_torch_and_carries_metadata(tmp_path, tiny_conv):
    result = export_onnx(tiny_conv, SPEC, tmp_path / "m.onnx", source_sha256="abc")
    model = onnx.load(str(result.path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert model.producer_name == "repfx-deploy"
    assert meta["repfx.source_sha256"] == "abc"
    assert json.loads(meta["repfx.input_spec"])[0]["shape"] == [1, 3, 8, 8]
    assert model.opset_import[0].version >= 17
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(OrtRunner(result.path).run([x])[0], TorchRunner(tiny_conv).run([x])[0], atol=1e-5)


def test_export_folds_batchnorm_constants(tmp_path, tiny_conv):
    result = export_onnx(tiny_conv, SPEC, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "BatchNormalization" not in ops  # folded into the conv by the optimizer


def test_export_handles_two_inputs(tmp_path):
    model = tiny_models.TwoInputNet().eval()
    specs = (InputSpec("x", (2, 6)), InputSpec("y", (2, 5)))
    result = export_onnx(model, specs, tmp_path / "two.onnx")
    names = [i.name for i in onnx.load(str(result.path)).graph.input]
    assert names == ["x", "y"]


def test_torchscript_module_exports_with_fallback_exporter(tmp_path, tiny_conv):
    scripted = torch.jit.trace(tiny_conv, torch.randn(1, 3, 8, 8))
    result = export_onnx(scripted, SPEC, tmp_path / "ts.onnx")
    assert result.exporter == "torchscript"
    assert result.path.exists()


def test_export_refuses_opset_above_tvm_limit():
    with pytest.raises(ExportError, match="opset 23|Opset 23"):
        ExportConfig(opset=23)


def test_export_refuses_existing_output_when_not_forced(tmp_path, tiny_conv):
    out = tmp_path / "m.onnx"
    out.write_text("keep me")
    with pytest.raises(OutputExistsError):
        export_onnx(tiny_conv, SPEC, out, force=False)
    assert out.read_text() == "keep me"


class _EighNet(torch.nn.Module):
    """An operator (eigendecomposition) that no ONNX exporter supports."""

    def forward(self, x):
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


def test_export_failure_names_operator_and_leaves_no_file(tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="linalg_eigh"):
        export_onnx(_EighNet(), (InputSpec("input", (1, 4, 4)),), out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_torch_export_archive_module_exports_and_matches(tmp_path, tiny_conv):
    from repfx_deploy.ingest.loader import load_model

    archive = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny_conv, (torch.randn(1, 3, 8, 8),)), archive)
    loaded = load_model(archive)
    result = export_onnx(loaded.module, loaded.input_specs, tmp_path / "m.onnx")
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(OrtRunner(result.path).run([x])[0], TorchRunner(loaded.module).run([x])[0], atol=1e-5)
