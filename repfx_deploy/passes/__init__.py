"""Passes: compression steps, each a ``Pass`` registered for its typed config (see ``protocol.py``)."""

from repfx_deploy.passes.protocol import Pass, PassConfig, PassContext, PassResult, Prepared, SearchSpace, Site
from repfx_deploy.passes.registry import PASS_KINDS, apply, register_pass, run_passes

__all__ = [
    "PASS_KINDS",
    "Pass",
    "PassConfig",
    "PassContext",
    "PassResult",
    "Prepared",
    "SearchSpace",
    "Site",
    "apply",
    "register_pass",
    "run_passes",
]
