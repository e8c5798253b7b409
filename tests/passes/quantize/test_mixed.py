from repfx_deploy.passes.quantize.config import QuantizeConfig
from repfx_deploy.passes.quantize.graph import LayerInfo
from repfx_deploy.passes.quantize.mixed import Sensitivity, choose, layer_bytes


def _layers():
    return (LayerInfo("a", "conv", 8, "wq0", 1000, 10), LayerInfo("b", "conv", 8, "wq1", 1000, 10))


def test_choose_moves_the_least_sensitive_layer_to_int4_under_a_tight_budget():
    layers = _layers()
    sens = [Sensitivity("a", 0.01, 0.5), Sensitivity("b", 0.01, 0.02)]
    budget = layer_bytes(layers[0], 8) + layer_bytes(layers[1], 4)
    assert choose(layers, sens, int(budget), {}) == {"a": 8, "b": 4}


def test_choose_keeps_the_most_sensitive_layer_float_when_the_budget_allows():
    layers = _layers()
    sens = [Sensitivity("a", 0.3, 0.5), Sensitivity("b", 0.01, 0.02)]
    budget = layer_bytes(layers[0], "float") + layer_bytes(layers[1], 8)
    assert choose(layers, sens, int(budget), {}) == {"a": "float", "b": 8}


def test_choose_leaves_layers_fixed_by_layer_bits():
    layers = _layers()
    sens = [Sensitivity("a", 0.01, 0.02), Sensitivity("b", 0.01, 0.5)]
    assert choose(layers, sens, 1600, {"a": 8}) == {"a": 8, "b": 4}  # b is the sensitive one, but a is pinned


def test_size_budget_picks_bits_per_layer_and_stays_within_budget(run_quantize, residual_net, specs, calib):
    int8 = 16 * 3 * 9 + 2 * 16 * 16 * 9 + 16 * 5 + 4 * (16 * 3 + 5)  # all-int8 packed bytes of the residual net
    result = run_quantize(residual_net, specs, calib, QuantizeConfig(size_budget_bytes=int8 - 1000, calibration_method="minmax"))
    stats = result.extras
    assert stats["weights_bytes_packed_estimate"] <= int8 - 1000
    assert 4 in {layer.bits for layer in result.module.layers}
    assert len(stats["mixed_precision"]["sensitivity"]) == 4
    assert result.decisions == {layer.name: layer.bits for layer in result.module.layers}


def test_size_budget_leaves_layers_pinned_to_float_out_of_the_sensitivity_record(run_quantize, residual_net, specs, calib):
    config = QuantizeConfig(size_budget_bytes=10**6, calibration_method="minmax", layer_bits=(("fc", "float"),))
    result = run_quantize(residual_net, specs, calib, config)
    assert [s["layer"] for s in result.extras["mixed_precision"]["sensitivity"]] == ["stem", "conv1", "conv2"]
    assert result.decisions["fc"] == "float"
