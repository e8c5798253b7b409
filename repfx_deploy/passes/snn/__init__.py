"""ANN-to-SNN conversion with iterative retraining down to one timestep (IIR-SNN).

neurons.py    integrate-and-fire layers (reset by subtraction, learnable threshold and leak, surrogate spike)
balance.py    thresholds from a high percentile of the ANN's calibration activations
convert.py    torch.fx: fold BN, move first-layer max-pools, ReLU -> neuron, time-batching of skips
simulate.py   ``SpikingNet``: T unrolled steps of direct encoding, output averaged over the steps
iir.py        stage-wise retraining T = 5 -> ... -> timesteps on the shared fine-tuning loop, resumable
stats.py      spike rates, synaptic operations vs the ANN's MACs, energy ESTIMATE
handler.py    the recipe's ``kind = "snn"``
"""

from repfx_deploy.passes.snn.config import SnnConfig
from repfx_deploy.passes.snn.simulate import SpikingNet

__all__ = ["SnnConfig", "SpikingNet"]
