import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from snn_nets import (
    ConvBnPoolNet,
    GeluNet,
    InputSkipNet,
    OptionAShortcutNet,
    TwoLayerMLP,
    dataset,
    make,
)

from repfx_deploy.errors import PassError
from repfx_deploy.passes.snn.config import SnnConfig
from repfx_deploy.passes.snn.convert import convert
from repfx_deploy.passes.snn.neurons import IFNeuron, TimeExpand


def _convert(model, shape, T=8, n=64, percentile=100.0):
    x = torch.from_numpy(dataset(shape, n=n).x)
    snn, report = convert(model, x.split(32), SnnConfig(timesteps=T, percentile=percentile))
    return snn, report, x


def _rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_tiny_relu_net_at_large_T_approximates_ann():
    ann = make(TwoLayerMLP)
    snn, report, x = _convert(ann, (6,), T=256)
    with torch.no_grad():
        ref, out = ann(x), snn(x)
    assert len(report.neurons) == 1
    assert _rel_err(out, ref) < 0.02
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_error_shrinks_as_T_grows():
    ann = make(TwoLayerMLP)
    snn, _, x = _convert(ann, (6,), T=4)
    errs = []
    with torch.no_grad():
        ref = ann(x)
        for T in (4, 16, 64):
            snn.set_timesteps(T)
            errs.append(_rel_err(snn(x), ref))
    assert errs[0] > errs[1] > errs[2]


def test_batchnorm_is_folded_and_first_maxpool_moved_before_neurons():
    ann = make(ConvBnPoolNet)
    snn, report, x = _convert(ann, (1, 8, 8), T=128)
    assert report.bn_folded == 2 and report.bn_left == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    # the first pool (its input is the same at every step) now precedes its neuron; the second stays after
    assert report.maxpools_moved == 1
    order = [n.target for n in snn.body.graph.nodes if n.op == "call_module"]
    assert order.index("pool1") < order.index("snn_neuron_0")
    with torch.no_grad():
        ref, out = ann(x), snn(x)
    assert _rel_err(out, ref) < 0.1
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


@pytest.mark.parametrize("spike_pool", ["count", "or"])
def test_maxpool_current_matches_spike_pooling_at_one_step(spike_pool):
    # a step function commutes with max, so at T = 1 pooling the currents gives the spikes' pooled output
    ann = make(ConvBnPoolNet)
    x = torch.from_numpy(dataset((1, 8, 8), n=64).x)
    pooled_spikes, _ = convert(ann, x.split(32), SnnConfig(timesteps=1, maxpool=spike_pool))
    current, report = convert(ann, None, SnnConfig(timesteps=1, maxpool="current"))
    current.load_state_dict(pooled_spikes.state_dict())  # same parameters, only the pool's place differs
    assert report.maxpools_moved == 2
    order = [n.target for n in current.body.graph.nodes if n.op == "call_module"]
    assert order.index("pool1") < order.index("snn_neuron_0")
    neuron_1 = next(n for n in current.body.graph.nodes if n.target == "snn_neuron_1")
    assert neuron_1.args[0].target is F.max_pool2d  # the deeper, functional pool too
    with torch.no_grad():
        assert torch.allclose(current(x), pooled_spikes(x), atol=1e-6)
        current.set_timesteps(4)
        pooled_spikes.set_timesteps(4)
        assert not torch.allclose(current(x), pooled_spikes(x), atol=1e-6)  # at T > 1 it is a different network


def _conv2_current_and_grad(ann, x, maxpool):
    """conv2's output (the current into the second neurons) and its gradient at T = 1, all thresholds 1."""
    snn, _ = convert(ann, x.split(8), SnnConfig(timesteps=1, maxpool=maxpool))
    for _, n in snn.neurons():
        n.threshold.data.fill_(1.0)  # the same neurons for both placements
    seen = {}

    def keep(module, inputs, out):
        out.retain_grad()
        seen["out"] = out

    snn.body.conv2.register_forward_hook(keep)
    snn(x).sum().backward()
    return seen["out"].detach(), seen["out"].grad


def test_maxpool_current_sends_gradient_to_each_windows_strongest_current_at_one_step():
    # pooling binary spikes sends a window's gradient to one of its tied spikes (the first position when none
    # fires); pooling currents sends it to the window's largest current, the one that decides the spike
    ann = make(ConvBnPoolNet)
    x = torch.from_numpy(dataset((1, 8, 8), n=8).x)
    for maxpool, all_on_max in (("current", True), ("or", False)):
        current, grad = _conv2_current_and_grad(ann, x, maxpool)
        _, idx = F.max_pool2d(current, 2, return_indices=True)
        on_max = torch.zeros_like(current).flatten(2).scatter_(2, idx.flatten(2), 1.0).view_as(current).bool()
        hit = grad != 0
        assert bool(hit.any())
        assert bool((hit & ~on_max).any()) is not all_on_max, maxpool


def test_option_a_shortcut_and_residual_add_convert():
    ann = make(OptionAShortcutNet)
    snn, report, x = _convert(ann, (3, 8, 8), T=128)
    assert report.bn_folded == 3 and len(report.neurons) == 3 and report.time_expands == 0
    neurons = dict(snn.neurons())
    assert neurons["snn_neuron_0"].constant_input and not neurons["snn_neuron_2"].constant_input
    with torch.no_grad():
        ref, out = ann(x), snn(x)
    assert _rel_err(out, ref) < 0.1


def test_skip_from_input_is_repeated_over_steps():
    ann = make(InputSkipNet)
    snn, report, x = _convert(ann, (6,), T=128)
    assert report.time_expands == 1
    assert sum(isinstance(m, TimeExpand) for m in snn.modules()) == 1
    with torch.no_grad():
        assert _rel_err(snn(x), ann(x)) < 0.1


def test_one_step_forward_gives_logits_of_ann_shape():
    ann = make(ConvBnPoolNet)
    snn, _, x = _convert(ann, (1, 8, 8), T=1, percentile=99.9)
    with torch.no_grad():
        out = snn(x[:5])
    assert out.shape == (5, 4) and torch.isfinite(out).all()
    assert all(n.timesteps == 1 for _, n in snn.neurons())


def test_thresholds_follow_the_percentile():
    ann = make(TwoLayerMLP)
    _, high, _ = _convert(ann, (6,), percentile=100.0)
    _, low, _ = _convert(ann, (6,), percentile=90.0)
    assert low.neurons[0][2] < high.neurons[0][2]


def test_structure_only_conversion_loads_a_saved_state():
    ann = make(ConvBnPoolNet)
    snn, _, x = _convert(ann, (1, 8, 8), T=4)
    empty, _ = convert(ann, None, SnnConfig(timesteps=4))
    assert all(float(n.threshold.detach()) == 1.0 for _, n in empty.neurons())
    empty.load_state_dict(snn.state_dict())
    with torch.no_grad():
        assert torch.equal(empty(x), snn(x))


def test_original_model_is_left_untouched():
    ann = make(ConvBnPoolNet)
    before = {k: v.clone() for k, v in ann.state_dict().items()}
    _convert(ann, (1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in ann.state_dict().items())
    assert not any(isinstance(m, IFNeuron) for m in ann.modules())


def test_gelu_is_refused_by_name():
    with pytest.raises(PassError, match="GELU|gelu"):
        _convert(make(GeluNet), (6,))


def test_model_without_relu_is_refused():
    with pytest.raises(PassError, match="no ReLU"):
        _convert(nn.Sequential(nn.Linear(6, 3)), (6,))
