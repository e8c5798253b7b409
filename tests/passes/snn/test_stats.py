import torch
import torch.nn as nn
from snn_nets import TwoLayerMLP, dataset, make

from repfx_deploy.passes.snn.config import SnnConfig
from repfx_deploy.passes.snn.convert import convert
from repfx_deploy.passes.snn.stats import spike_stats


def test_synaptic_ops_count_spikes_and_energy_is_labelled_estimate():
    ann = make(TwoLayerMLP)
    x = torch.from_numpy(dataset((6,), n=32).x)
    snn, _ = convert(ann, [x], SnnConfig(timesteps=4, percentile=99.0))
    s = spike_stats(snn, [x])
    fc1, fc2 = s["layers"]
    # fc1 sees the analog input once (direct encoding); fc2 sees spikes at each of 4 steps
    assert fc1["input"] == "analog" and fc1["snn_mac_ops"] == fc1["ann_macs"] == 6 * 16
    assert fc2["input"] == "spikes" and fc2["snn_mac_ops"] == 0
    rate = s["spike_rates"]["snn_neuron_0"]
    assert abs(fc2["snn_ac_ops"] - 16 * 3 * 4 * rate) <= 1  # accumulates = MACs x steps x input density
    assert s["ann_macs"] == 6 * 16 + 16 * 3
    e = s["energy_estimate"]
    assert e["is_estimate"] is True and "pJ" in e["method"]
    assert e["ann_pj"] == round(s["ann_macs"] * 4.6, 1)
    assert abs(e["snn_pj"] - (s["snn_mac_ops"] * 4.6 + s["snn_ac_ops"] * 0.9)) < 1.0


def test_silent_network_has_zero_rates():
    ann = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        ann[0].bias.fill_(-100.0)
    x = torch.randn(8, 4)
    snn, _ = convert(ann, [x], SnnConfig(timesteps=2))
    s = spike_stats(snn, [x])
    assert s["mean_spike_rate"] == 0.0 and s["snn_ac_ops"] == 0


def test_spiking_maxpool_output_counts_as_spikes():
    from snn_nets import ConvBnPoolNet

    ann = make(ConvBnPoolNet)
    x = torch.from_numpy(dataset((1, 8, 8), n=16).x)
    snn, _ = convert(ann, [x], SnnConfig(timesteps=6))
    layers = {entry["layer"]: entry for entry in spike_stats(snn, [x])["layers"]}
    assert layers["conv1"]["input"] == "analog" and layers["fc"]["input"] == "spikes"
