import json
import shutil
from pathlib import Path

import pytest
from protocol_checks import make_context

from repfx_deploy.errors import PassError, RecipeError
from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.registry import apply, parse_pass

ROOT = Path(__file__).resolve().parents[3]


def test_ptq_without_calibration_data_raises_pass_error_naming_the_flag(residual_net, specs):
    with pytest.raises(PassError, match="--calibration"):
        apply(residual_net, QuantizeConfig(mode="ptq"), make_context(specs))


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"bitz": 8}, "bitz"),
        ({"weight_bits": 3}, "passes[0].weight_bits"),
        ({"calibration_method": "guess"}, "passes[0].calibration_method"),
        ({"layer_bits": {"conv1": 2}}, "passes[0].layer_bits"),
        ({"percentile": 50.0}, "percentile"),
        ({"size_budget_bytes": -1}, "size_budget_bytes"),
    ],
)
def test_bad_quantize_key_or_value_is_a_recipe_error_naming_it(table, needle):
    with pytest.raises(RecipeError) as info:
        parse_pass({"kind": "quantize", **table}, 0)
    assert needle in str(info.value) and "passes[0]" in str(info.value)


def test_handler_reports_int8_kernels_in_extras_when_artifact_is_not_checked(run_quantize, residual_net, specs, calib):
    result = run_quantize(residual_net, specs, calib, QuantizeConfig(calibration_method="minmax"), artifact_checks=False)
    ran = result.extras["ran_int8"]
    assert ran["onnxruntime"] is True and ran["tvm"] is False
    assert ran["onnxruntime_kernels"]["int8_ops"]["QLinearConv"] == 3
    assert result.extras["weights_bytes_packed_estimate"] < result.extras["weights_bytes_float"] / 3
    json.dumps(result.to_record())  # the report must be able to hold it


def test_handler_skips_its_own_int8_check_when_the_caller_checks_the_artifact(run_quantize, residual_net, specs, calib):
    result = run_quantize(residual_net, specs, calib, QuantizeConfig(calibration_method="minmax"), artifact_checks=True)
    assert "ran_int8" not in result.extras and result.extras["ran_int8_tvm"].startswith("no")


def test_compress_recipe_with_quantize_pass_on_fashion_mnist(tmp_path):
    from repfx_deploy.measure.timing import TimingConfig
    from repfx_deploy.pipeline.compress import CompressRequest, compress
    from repfx_deploy.recipe import load_recipe

    example = ROOT / "examples" / "fashion-mnist"
    recipe_path = tmp_path / "recipe.toml"
    text = (example / "recipe.toml").read_text().replace("../../calibration", str(ROOT / "calibration"))
    # fewer samples than the example uses keep this test quick; the recipe path is the same
    text = text.replace("calibration_samples = 256", "calibration_samples = 64\neval_samples = 100")
    # the example's own pass list is replaced, so this test states the pass it checks
    text = text[: text.index("[[passes]]")] if "[[passes]]" in text else text
    recipe_path.write_text(text + '\n[[passes]]\nkind = "quantize"\nmode = "ptq"\ncalibration_method = "percentile"\n')
    shutil.copy(example / "eval-1000.npz", tmp_path / "eval-1000.npz")
    report = compress(CompressRequest(
        model_path=example / "model.pt", out_dir=tmp_path / "out", recipe=load_recipe(recipe_path),
        timing=TimingConfig(warmup=2, repeats=5, min_time_s=0.0, remeasure=0),
        compile_tvm=False,  # TVM on QDQ models is covered in test_ptq.py; here the recipe path is what is tested
    ))
    extras = report["passes"][0]["extras"]
    assert extras["ran_int8"]["onnxruntime"] is True and extras["ran_int8"]["checked"] == "model.onnx"
    assert "Relu" not in extras["ran_int8"]["onnxruntime_kernels"]["all_ops"]  # every ReLU folded into a quantizer
    assert report["compressed"]["size_bytes"] < report["baseline"]["size_bytes"]
    assert report["compressed"]["accuracy"] >= report["baseline"]["accuracy"] - 0.03  # 100 images: 3 of them
    # top-1 agreement with the float model on the 64 calibration images, on ONNX Runtime's int8 kernels: 60 of 64
    # (0.9375), the same with the pass before the protocol; one image is 1.6 points
    assert report["compressed"]["agreement"] >= 0.9


def test_example_recipe_parses_into_a_quantize_config():
    from repfx_deploy.recipe import load_recipe

    (config,) = load_recipe(ROOT / "examples" / "fashion-mnist" / "recipe.toml").passes
    assert config == QuantizeConfig(mode="ptq", calibration_method="mse")
