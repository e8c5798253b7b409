"""Structured pruning: remove whole channels, attention heads and hidden units, leaving a smaller dense model.

    graph.py / ops.py / attention.py   trace with torch.fx, find the channels that must go together
    importance.py                      score them (L1, L2, BatchNorm scale, first-order Taylor)
    plan.py                            ratios or a MACs target -> channels kept per group, rounded
    apply.py                           slice the weights, update the layers' attributes
    core.py                            ``prune(module, example_inputs, PruneConfig(...))``
    handler.py                         the recipe's ``kind = "prune"``, with BN re-calibration and fine-tuning
"""

from repfx_deploy.passes.prune.config import PruneConfig
from repfx_deploy.passes.prune.core import PruneResult, prune

__all__ = ["PruneConfig", "PruneResult", "prune"]
