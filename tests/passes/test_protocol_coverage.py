"""Every pass kind is registered to the protocol and has its contracts checked by a test of its own."""

from pathlib import Path

import pytest

from repfx_deploy.passes.protocol import Pass, PassConfig
from repfx_deploy.passes.registry import BUILTIN_PASSES, PASS_KINDS, pass_for_kind, register_pass

HERE = Path(__file__).resolve().parent
# the tests folder of each kind (recover lives in the recovery package)
FOLDERS = {"recover": "recovery"}


@pytest.mark.parametrize("kind", PASS_KINDS)
def test_every_kind_is_a_registered_protocol_pass(kind):
    the_pass = pass_for_kind(kind)
    assert isinstance(the_pass, Pass) and the_pass.kind == kind
    assert issubclass(the_pass.config_type, PassConfig) and the_pass.config_type.kind == kind
    assert BUILTIN_PASSES[kind].startswith("repfx_deploy.passes.")


@pytest.mark.parametrize("kind", PASS_KINDS)
def test_every_kind_has_a_protocol_test_calling_check_protocol(kind):
    path = HERE / FOLDERS.get(kind, kind) / "test_protocol.py"
    assert path.exists(), f"{path} is missing: every pass's contracts are checked with check_protocol"
    assert "check_protocol(" in path.read_text(encoding="utf-8")


def test_register_pass_refuses_a_second_pass_for_a_config_type():
    existing = pass_for_kind("recover")

    class Again(type(existing)):  # type: ignore[misc]
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_pass(Again)
