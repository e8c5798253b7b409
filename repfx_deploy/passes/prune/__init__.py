"""Structured pruning: remove whole channels, attention heads and hidden units, leaving a smaller dense model.

graph.py / ops.py / attention.py   trace with torch.fx, find the channels that must go together
importance.py                      score them (L1, L2, BatchNorm scale, first-order Taylor)
plan.py                            ratios, a MACs target or channels kept per group -> channel classes kept
space.py                           the pass's sites (one per group), choices in channels kept
apply.py                           slice the weights, update the layers' attributes
core.py                            prepare (trace, score, plan) once; apply_assignment many times; prune()
handler.py                         the recipe's ``kind = "prune"`` (registered Pass)
"""

from repfx_deploy.passes.prune.config import PruneConfig
from repfx_deploy.passes.prune.core import prune

__all__ = ["PruneConfig", "prune"]
