"""Run the tokens pass as the pipeline does: through the registry, on a context with the host profile."""

from __future__ import annotations

import pytest
from protocol_checks import make_context

from repfx_deploy.passes.registry import apply


@pytest.fixture
def apply_tokens():
    """``apply_tokens(model, config, specs, profile=None)`` -> the pass's ``PassResult``."""

    def run(model, config, specs, profile=None):
        return apply(model, config, make_context(specs, profile=profile))

    return run
