import numpy as np
import onnx
import pytest
import torch

from repfx_deploy.lower.onnx_export import export_onnx
from repfx_deploy.measure.runtimes import OrtRunner
from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.quantize.inspect_ort import ort_kernels


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, residual_factory, specs, calib, run_quantize):
    """The residual net quantized once (module scope: the ORT and TVM tests share the export)."""
    model = residual_factory()
    q = run_quantize(model, specs, calib, QuantizeConfig(calibration_method="mse")).module
    path = export_onnx(q, specs, tmp_path_factory.mktemp("q") / "q.onnx").path
    return model, q, path, calib


def test_ptq_model_stays_close_to_float(quantized):
    model, q, _, calib = quantized
    x = torch.from_numpy(calib.x[:16])
    with torch.no_grad():
        ref, out = model(x), torch.cat([q(x[i : i + 1]) for i in range(16)])
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cos > 0.99


def test_ptq_exports_qdq_with_int8_weight_initializers(quantized):
    graph = onnx.load(str(quantized[2])).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and "weight_int" in i.name]
    assert len(int8) == 4  # stem, conv1, conv2, fc: 1 byte per weight in the file


def test_ort_runs_ptq_model_with_int8_kernels(quantized):
    kernels = ort_kernels(quantized[2])
    assert kernels.int8_ops.get("QLinearConv") == 3
    assert kernels.int8_ops.get("QLinearAdd") == 1  # the residual add, its ReLU folded into the quantizer
    assert "Conv" not in kernels.float_compute_ops and kernels.runs_int8


def test_ort_int8_agrees_with_fake_quant_torch(quantized):
    _, q, path, calib = quantized
    ort = OrtRunner(path, 1)
    for i in range(8):
        x = calib.x[i : i + 1]
        with torch.no_grad():
            ref = q(torch.from_numpy(x)).numpy()
        out = ort.run([x])[0]
        # integer kernels round once per requantization where torch rounds in float: a step or two of the output
        np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max() + 1e-3)
        assert out.argmax() == ref.argmax()


@pytest.mark.tvm
def test_tvm_compiles_qdq_model_and_agrees_with_ort(quantized, tmp_path):
    from repfx_deploy.compile.tvm_build import CompileConfig, compile_onnx
    from repfx_deploy.compile.tvm_runtime import load_tvm_runner
    from repfx_deploy.targets import get_profile, resolve_tvm_target

    _, _, path, calib = quantized
    compile_onnx(path, tmp_path, CompileConfig(target=resolve_tvm_target(get_profile("host"))))
    tvm_r, ort_r = load_tvm_runner(tmp_path), OrtRunner(path, 1)
    for i in range(4):
        x = calib.x[i : i + 1]
        ref, out = ort_r.run([x])[0], tvm_r.run([x])[0]
        np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max() + 1e-3)


def test_layer_bits_override_keeps_layer_float_and_sets_int4(run_quantize, residual_net, specs, calib):
    config = QuantizeConfig(layer_bits=(("fc", "float"), ("conv1", 4)))
    q = run_quantize(residual_net, specs, calib, config).module
    bits = {layer.name: layer.bits for layer in q.layers}
    assert bits == {"stem": 8, "conv1": 4, "conv2": 8, "fc": "float"}
    wq = {layer.name: q.weight_quants()[layer.weight_quant] for layer in q.layers if layer.weight_quant}
    assert int(wq["conv1"].weight_int.min()) >= -8 and int(wq["conv1"].weight_int.max()) <= 7
    assert int(wq["conv2"].weight_int.abs().max()) > 8


def test_layer_bits_with_unknown_layer_is_a_recipe_error(run_quantize, residual_net, specs, calib):
    from repfx_deploy.errors import RecipeError

    with pytest.raises(RecipeError, match="conv9"):
        run_quantize(residual_net, specs, calib, QuantizeConfig(layer_bits=(("conv9", 4),)))


def test_bias_correction_removes_the_mean_shift_of_layer_outputs(run_quantize, residual_net, specs, calib):
    import dataclasses

    config = QuantizeConfig(calibration_method="minmax", layer_bits=(("conv1", 4), ("conv2", 4), ("stem", 4)), bias_correction=False)
    inputs = [torch.from_numpy(calib.x[i : i + 32]) for i in (0, 32)]
    plain = run_quantize(residual_net, specs, calib, config).module
    corrected = run_quantize(residual_net, specs, calib, dataclasses.replace(config, bias_correction=True))
    assert corrected.extras["bias_corrected_layers"] == 3  # stem, conv1, conv2 (fc's output is the graph output: not quantized)
    reference = _layer_means(plain, inputs, "float")  # the float model, before any correction
    shift = lambda means: sum(float((means[k] - reference[k]).abs().mean()) for k in reference)  # noqa: E731
    assert shift(_layer_means(corrected.module, inputs, "frozen")) < 0.5 * shift(_layer_means(plain, inputs, "frozen"))


def _layer_means(model, inputs, state):
    """Per-channel means of every quantized layer's output, in ``state`` (float or frozen = quantized)."""
    from repfx_deploy.passes.quantize.fakequant import ProbeSums

    acts = model.act_quants()
    probes = {L.name: acts[L.out_quant] for L in model.layers if L.out_quant}
    for q in probes.values():
        q.probe = ProbeSums()
    model.set_state(acts=state, weights=state)
    with torch.no_grad():
        for x in inputs:
            model(x)
    means = {name: q.probe.mean for name, q in probes.items()}
    for q in probes.values():
        q.probe = None
    model.set_state(acts="frozen", weights="frozen")
    return means
