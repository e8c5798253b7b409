"""The reproducing recipe: the search's recipe with the chosen assignment's configs (and the result's fine-tune),
which replays to the same model."""

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from protocol_checks import make_context, outputs
from tiny_models import TinyConvNet

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.passes.chain import prepare_chain
from repfx_deploy.passes.recovery.handler import RecoverConfig
from repfx_deploy.passes.registry import parse_pass, run_passes
from repfx_deploy.recipe import Recipe, parse_recipe
from repfx_deploy.search.recipe_out import finetune_configs, finetune_position, reproducing_recipe, reproducing_toml
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import get_profile

SPECS = (InputSpec("input", (1, 3, 8, 8)),)
PROFILE = dataclasses.replace(get_profile("host"), channel_multiple=2)  # the tiny net's 8 channels: 2, 4, 6, 8


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset(x=rng.standard_normal((n, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, n), source="random")


def _chain(passes):
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    configs = tuple(parse_pass(p, i) for i, p in enumerate(passes))
    context = make_context(SPECS, calibration=_data(), train=_data(seed=1), reference=model, profile=PROFILE)
    return model, configs, context, prepare_chain(model, configs, context)


PRUNE_QUANTIZE = [{"kind": "prune", "ratio": 0.25}, {"kind": "quantize", "calibration_method": "minmax"}]


def _replayed(recipe_text, model, context):
    replay = parse_recipe(tomllib.loads(recipe_text), base=Path("."))
    return replay, run_passes(model, replay.passes, context).module


def test_reproducing_recipe_replays_the_chosen_prune_and_quantize_assignment_exactly():
    model, configs, context, chain = _chain(PRUNE_QUANTIZE)
    prune_site = chain.space.spaces[0].sites[0]
    assert len(prune_site.choices) > 2
    assignment = {f"prune/{prune_site.name}": prune_site.choices[0], "quantize/fc": "float"}
    run = chain.apply(assignment)
    text = reproducing_toml(Recipe(input_specs=SPECS, passes=configs), run.configs)
    replay, module = _replayed(text, model, context)
    assert [c.kind for c in replay.passes] == ["prune", "quantize"]
    assert replay.passes == run.configs
    x = (torch.from_numpy(_data(4, seed=7).x),)
    assert torch.equal(outputs(module, x), outputs(run.module, x))
    assert not torch.equal(outputs(module, x), outputs(chain.apply({}).module, x))  # the assignment mattered


def test_reproducing_recipe_with_the_fine_tune_replays_to_the_same_weights():
    model, configs, context, chain = _chain(PRUNE_QUANTIZE)
    run = chain.apply({f"prune/{chain.space.spaces[0].sites[0].name}": 4})
    tuned = finetune_configs(run.configs, steps=3)
    assert [c.kind for c in tuned] == ["prune", "recover", "quantize"]
    first = run_passes(model, tuned, context).module
    replay, module = _replayed(reproducing_toml(Recipe(input_specs=SPECS, passes=configs), tuned), model, context)
    assert replay.passes == tuned
    theirs, ours = module.state_dict(), first.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.allclose(theirs[k].float(), ours[k].float(), atol=1e-6) for k in ours)


def test_finetune_goes_before_the_first_quantize_pass_else_last():
    prune, quant = parse_pass({"kind": "prune"}, 0), parse_pass({"kind": "quantize"}, 1)
    assert finetune_position((prune, quant)) == 1 and finetune_position((prune,)) == 1
    assert [c.kind for c in finetune_configs((prune,), steps=5)] == ["prune", "recover"]
    assert [c.kind for c in finetune_configs((quant,), steps=5)] == ["recover", "quantize"]
    (recover,) = [c for c in finetune_configs((prune,), steps=5) if isinstance(c, RecoverConfig)]
    assert recover.finetune_steps == 5 and recover.finetune is not None
    (bn_only,) = [c for c in finetune_configs((prune,), steps=0) if isinstance(c, RecoverConfig)]
    assert bn_only.finetune is None and bn_only.bn_recalibrate


@pytest.mark.parametrize(
    ("existing", "steps", "expected_steps", "expected_epochs"),
    [
        (RecoverConfig(finetune_epochs=0.0, finetune_steps=0), 7, 7, 0.0),  # BN only: given the fine-tune
        (RecoverConfig(finetune_epochs=0.0, finetune_steps=20), 7, 20, 0.0),  # trains more already: kept
        (RecoverConfig(finetune_epochs=2.0), 7, 0, 2.0),  # trains by epochs: the user's budget, kept
    ],
)
def test_finetune_reuses_a_recover_pass_already_in_place(existing, steps, expected_steps, expected_epochs):
    prune = parse_pass({"kind": "prune"}, 0)
    out = finetune_configs((prune, existing), steps=steps)
    assert [c.kind for c in out] == ["prune", "recover"]
    assert (out[1].finetune_steps, out[1].finetune_epochs) == (expected_steps, expected_epochs)


def test_reproducing_recipe_keeps_everything_but_the_passes():
    recipe = Recipe(
        target="rpi4", input_specs=SPECS, opset=17, tune_trials=3, passes=(parse_pass({"kind": "prune"}, 0),)
    )
    out = reproducing_recipe(recipe, (parse_pass({"kind": "prune", "ratio": 0.1}, 0),))
    assert (out.target, out.input_specs, out.opset, out.tune_trials) == ("rpi4", SPECS, 17, 3)
    assert out.passes[0].ratio == 0.1
