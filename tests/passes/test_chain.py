"""A recipe's passes as one space: keys, defaults, apply, and reuse of later passes' preparations."""

import dataclasses

import torch
from protocol_checks import make_context, outputs
from tiny_models import TinyConvNet

from repfx_deploy.passes.chain import pass_prefixes, prepare_chain
from repfx_deploy.passes.registry import parse_pass, pass_for, run_passes
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import get_profile

# two channels a step, so the tiny net's groups offer several widths
PROFILE = dataclasses.replace(get_profile("rpi4"), channel_multiple=2)

SPECS = (InputSpec("input", (1, 3, 8, 8)),)


def _model():
    torch.manual_seed(0)
    return TinyConvNet().eval()


def _configs():
    return (parse_pass({"kind": "prune", "ratio": 0.5}, 0), parse_pass({"kind": "prune", "ratio": 0.25}, 1))


def test_pass_prefixes_number_only_repeated_kinds():
    configs = (*_configs(), parse_pass({"kind": "recover"}, 2))
    assert pass_prefixes(configs) == ("prune.1", "prune.2", "recover")


def test_chain_apply_equals_run_passes_with_the_assigned_configs():
    model, configs = _model(), _configs()
    context = make_context(SPECS, profile=PROFILE)
    chain = prepare_chain(model, configs, context)
    site = next(s for s in chain.space.spaces[0].sites if len(s.choices) > 1)
    key = f"prune.1/{site.name}"
    choice = next(c for c in site.choices if c != site.default)
    run = chain.apply({key: choice})
    plain = run_passes(model, run.configs, context)
    assert run.configs[0].channels == tuple(run.results[0].decisions.items())
    x = (torch.randn(2, 3, 8, 8),)
    assert torch.equal(outputs(run.module, x), outputs(plain.module, x))
    assert run.results[0].decisions[site.name] == choice
    assert torch.equal(outputs(chain.apply({}).module, x), outputs(run_passes(model, configs, context).module, x))


def test_chain_prepares_a_later_pass_again_only_when_its_upstream_choices_change(monkeypatch):
    model, configs = _model(), _configs()
    chain = prepare_chain(model, configs, make_context(SPECS, profile=PROFILE))
    the_pass = pass_for(configs[1])
    calls = []
    original = type(the_pass).prepare
    monkeypatch.setattr(type(the_pass), "prepare", lambda self, *a: calls.append(1) or original(self, *a))
    last = next(s for s in chain.space.spaces[1].sites if len(s.choices) > 1)
    for choice in last.choices:
        chain.apply({f"prune.2/{last.name}": choice})
    assert calls == []  # the second pass was prepared, at the first pass's defaults, when the chain was built
    first = next(s for s in chain.space.spaces[0].sites if len(s.choices) > 1)
    chain.apply({f"prune.1/{first.name}": next(c for c in first.choices if c != first.default)})
    assert calls == [1]
