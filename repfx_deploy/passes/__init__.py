"""Passes: compression steps. Each takes an ``nn.Module`` and returns an ``nn.Module``."""

from repfx_deploy.passes.registry import (
    PASS_KINDS,
    PassContext,
    PassResult,
    apply_passes,
    register_pass,
)

__all__ = ["PASS_KINDS", "PassContext", "PassResult", "apply_passes", "register_pass"]
