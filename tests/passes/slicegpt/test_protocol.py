"""The slicegpt pass keeps the pass protocol's contracts, and its space is one width knob per residual stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from protocol_checks import check_protocol, make_context

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.passes.registry import parse_pass, pass_for
from repfx_deploy.spec import InputSpec
from repfx_deploy.targets import load_profile_file

SPECS = (InputSpec("input_ids", (1, 16), "int64"),)
STREAMS = ["embed", "layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]


def _token_data(n=12, seed=0):
    return Dataset(
        x=np.random.default_rng(seed).integers(0, 100, (n, 16)).astype(np.int64), y=None, source="tokens.npz"
    )


def _wrapped(request, fixture):
    from repfx_deploy.ingest.hf import wrap_hf_model

    return wrap_hf_model(request.getfixturevalue(fixture), "causal-lm" if fixture == "tiny_llama" else "encoder")


def _slicegpt(**keys):
    return parse_pass({"kind": "slicegpt", "batch_size": 4, **keys}, 0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_bert"])
def test_slicegpt_keeps_every_protocol_contract(request, fixture, probe_ids):
    module = _wrapped(request, fixture)
    default, moved = check_protocol(
        module, _slicegpt(slicing=0.25), make_context(SPECS, calibration=_token_data()), (probe_ids,)
    )
    assert default.decisions == dict.fromkeys(STREAMS, 48)
    assert moved.decisions == dict.fromkeys(STREAMS, 16) and moved.macs_after < default.macs_after


def test_space_defaults_follow_the_ramp_and_kept_end_layers(request):
    config = _slicegpt(slicing=0.25, schedule="ramp", ramp=0.5, keep_first_layers=1)
    space = pass_for(config).space(
        _wrapped(request, "tiny_llama"), config, make_context(SPECS, calibration=_token_data())
    )
    # layer 0 reads and writes only full streams; the two sliced streams ramp from slicing 0 to 0.5
    assert [space.defaults()[s] for s in STREAMS] == [64, 64, 64, 64, 32]


def test_space_has_one_width_site_per_stream_with_multiples_of_the_target(request):
    space = pass_for(_slicegpt(slicing=0.25)).space(
        _wrapped(request, "tiny_llama"), _slicegpt(slicing=0.25), make_context(SPECS, calibration=_token_data())
    )
    assert [s.name for s in space.sites] == STREAMS
    for site in space.sites:  # host: channel_multiple 16, hidden 64; a quarter of it is the floor
        assert (site.knob, site.choices, site.default, site.unchanged) == ("width_kept", (16, 32, 48, 64), 48, 64)
    assert space.size == 4**5


def test_space_includes_the_configs_own_widths_when_off_the_multiple(request):
    config = _slicegpt(widths=[64, 56, 48, 40, 8])
    space = pass_for(config).space(
        _wrapped(request, "tiny_llama"), config, make_context(SPECS, calibration=_token_data())
    )
    assert space.defaults() == dict(zip(STREAMS, [64, 56, 48, 40, 8]))
    assert space.site("layers.0.attn").choices == (16, 32, 48, 56, 64)
    assert space.site("layers.1.mlp").choices == (8, 16, 32, 48, 64)


def test_space_choices_are_thinned_to_about_a_dozen_on_a_wide_stream():
    from repfx_deploy.passes.slicegpt.handler import width_choices

    choices = width_choices(576, 8, 432)
    assert choices[0] == 144 and choices[-1] == 576 and 432 in choices
    assert 12 <= len(choices) <= 13 and all(c % 8 == 0 for c in choices)


def test_slicegpt_uses_a_profile_loaded_from_a_file(request, tmp_path):
    (tmp_path / "wide.toml").write_text(
        'name = "wide"\ndescription = "32-lane vectors"\nchannel_multiple = 32\n[tvm_target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\n'
    )
    profile = load_profile_file(tmp_path / "wide.toml")
    context = make_context(SPECS, calibration=_token_data(), profile=profile)
    config = _slicegpt(slicing=0.25)
    the_pass = pass_for(config)
    prepared = the_pass.prepare(_wrapped(request, "tiny_llama"), config, context)
    # 48 is no multiple of 32: the kept width rounds down to 32, and the choices are multiples of 32
    assert prepared.space.defaults() == dict.fromkeys(STREAMS, 32)
    assert all(site.choices == (32, 64) for site in prepared.space.sites)
    result = the_pass.apply_assignment(prepared, {"layers.1.mlp": 64})
    assert result.module.hf_model.model.embed_tokens.weight.shape == (100, 32)
    assert result.module.hf_model.lm_head.weight.shape == (100, 64)


def test_default_assignment_gives_what_slice_model_gives_with_the_same_multiple(request, tiny_llama, probe_ids):
    import copy

    from repfx_deploy.passes.slicegpt import SliceGPTConfig, slice_model
    from repfx_deploy.passes.slicegpt.handler import calibration_batches

    module = _wrapped(request, "tiny_llama")
    config = _slicegpt(slicing=0.25)
    result = pass_for(config).apply(module, config, make_context(SPECS, calibration=_token_data()))
    direct = copy.deepcopy(module)
    slice_model(
        direct.hf_model,
        calibration_batches(_token_data(), config),
        SliceGPTConfig(slicing=0.25, batch_size=4),
        multiple=16,
    )
    with torch.no_grad():
        assert torch.equal(result.module(probe_ids), direct(probe_ids))
