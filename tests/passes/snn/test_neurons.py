import pytest
import torch

from repfx_deploy.passes.snn.neurons import IFNeuron, TimeExpand


def test_if_neuron_resets_by_subtraction_exactly():
    # threshold 1, membrane starts at 0.5: inputs 0.7, 0.7, 0.2, 1.6 over 4 steps (one sample, one unit)
    n = IFNeuron(1.0, timesteps=4, learn_threshold=False, learn_leak=False)
    x = torch.tensor([[0.7], [0.7], [0.2], [1.6]])
    out = n(x)
    # v: 1.2 -> spike, 0.2 | 0.9 | 1.1 -> spike, 0.1 | 1.7 -> spike, 0.7 (surplus kept, not reset to zero)
    assert out.flatten().tolist() == [1.0, 0.0, 1.0, 1.0]


def test_if_neuron_output_is_threshold_times_spike_and_rate_tracks_input():
    n = IFNeuron(2.0, timesteps=40, learn_threshold=False, constant_input=True)
    x = torch.tensor([[0.5, 1.0, 3.0, -1.0]])  # one sample, 4 units; the same input every step
    out = n(x).reshape(40, 1, 4)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    rate = out.mean(0).flatten()
    # the mean output approximates the ReLU clipped at the threshold, to within threshold / T
    assert torch.allclose(rate, torch.tensor([0.5, 1.0, 2.0, 0.0]), atol=2.0 / 40 + 1e-6)


def test_if_neuron_at_one_step_fires_from_half_threshold():
    n = IFNeuron(1.0, timesteps=1)
    with torch.no_grad():
        out = n(torch.tensor([[0.49, 0.5, 3.0]]))
    assert out.tolist() == [[0.0, 1.0, 1.0]]


def test_leak_below_one_forgets_membrane():
    n = IFNeuron(1.0, timesteps=2, leak=0.5, initial_membrane=0.0)
    with torch.no_grad():
        out = n(torch.tensor([[0.6], [0.6]]))
    assert out.flatten().tolist() == [0.0, 0.0]  # 0.6, then 0.3 + 0.6 = 0.9 < 1 (IF would fire: 1.2)


@pytest.mark.parametrize("surrogate", ["triangle", "sigmoid", "atan"])
def test_surrogate_gradient_reaches_input_threshold_and_leak(surrogate):
    n = IFNeuron(1.0, timesteps=3, surrogate=surrogate)
    x = torch.full((3, 5), 0.4, requires_grad=True)
    n(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert n.threshold.grad is not None and n.threshold.grad != 0
    assert n.leak.grad is not None


def test_time_expand_repeats_step_major():
    e = TimeExpand(3)
    x = torch.arange(4.0).reshape(2, 2)
    assert torch.equal(e(x), torch.cat([x, x, x]))
