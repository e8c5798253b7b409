"""The lowrank pass on the pass protocol: every contract (check_protocol), the space of a known model, the
explicit ``ranks`` field, a target profile from a file, and prepare's work not redone by apply_assignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lowrank_zoo import ConvBNNet, QuietBranchMLP, TinyEncoder, WideMLP
from protocol_checks import check_protocol, make_context, snapshot

from repfx_deploy.data.datasets import Dataset
from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.lowrank import LowRankConfig
from repfx_deploy.passes.lowrank.factorize import Factorized
from repfx_deploy.passes.registry import apply, parse_pass, pass_for_kind
from repfx_deploy.spec import InputSpec

VEC = (InputSpec("input", (1, 32)),)
IMG = (InputSpec("input", (1, 3, 16, 16)),)
SEQ = (InputSpec("input", (1, 7, 32)),)
LOWRANK = pass_for_kind("lowrank")


def _model(cls):
    torch.manual_seed(0)
    return cls().eval()


def _data(shape, n=64, labeled=False) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n) if labeled else None, "random"
    )


@pytest.mark.parametrize(
    ("cls", "specs", "config"),
    [
        (WideMLP, VEC, LowRankConfig(params_ratio=0.6, round_to=4)),
        (WideMLP, VEC, LowRankConfig(energy=0.9, round_to=2, ranks={"fc2": 5})),
        (ConvBNNet, IMG, LowRankConfig(macs_ratio=0.6, conv_scheme="auto", round_to=2)),
        (TinyEncoder, SEQ, LowRankConfig(params_ratio=0.7, round_to=8)),
        (
            QuietBranchMLP,
            VEC,
            LowRankConfig(params_ratio=0.7, round_to=4, criterion="sensitivity", sensitivity_points=4),
        ),
    ],
    ids=["budget", "energy-pinned", "auto-schemes-bn", "encoder", "sensitivity"],
)
def test_protocol_contracts_hold(cls, specs, config):
    model = _model(cls)
    shape = specs[0].shape[1:]
    context = make_context(specs, calibration=_data(shape))
    default, moved = check_protocol(model, config, context, (torch.randn(2, *shape),))
    assert default.params_after < default.params_before
    assert moved.decisions != default.decisions


def test_protocol_contracts_hold_with_trained_rank():
    config = LowRankConfig(
        energy=0.9, round_to=2, trained_rank=True, trp_steps=2, trp_batch_size=16, nuclear_weight=0.01
    )
    context = make_context(VEC, train=_data((32,)))
    default, _ = check_protocol(_model(WideMLP), config, context, (torch.randn(2, 32),))
    assert default.extras["trained_rank"]["finetune"]["steps"] == 2


def test_space_of_wide_mlp_lists_ranks_up_to_the_last_cheaper_one_then_dense():
    space = LOWRANK.space(_model(WideMLP), LowRankConfig(params_ratio=0.6, round_to=4), make_context(VEC))
    # fc1 (32 -> 64) is cheaper up to rank 21, fc2 (64 -> 16) up to 12; the 16 -> 4 head never: not a site
    assert [s.name for s in space.sites] == ["fc1", "fc2"]
    assert space.site("fc1").choices == (4, 8, 12, 16, 20, "dense")
    assert space.site("fc2").choices == (4, 8, 12, "dense")
    assert all(s.knob == "rank_kept" and s.unchanged == "dense" for s in space.sites)
    assert space.defaults() == {"fc1": 4, "fc2": "dense"}  # the budget's own choice
    assert space.size == 24


def test_space_thins_long_rank_lists_keeping_ends_and_default():
    model = torch.nn.Sequential(torch.nn.Linear(256, 256))
    space = LOWRANK.space(
        model, LowRankConfig(ranks={"0": 37}, round_to=1), make_context((InputSpec("input", (1, 256)),))
    )
    choices = space.site("0").choices
    # useful ranks 1..127; 12 evenly spaced plus the pinned default 37
    assert choices[0] == 1 and choices[-2] == 127 and choices[-1] == "dense" and 37 in choices
    assert len(choices) == 14 and space.site("0").default == 37


def test_space_of_auto_conv_spells_the_second_scheme():
    space = LOWRANK.space(
        _model(ConvBNNet), LowRankConfig(params_ratio=0.6, conv_scheme="auto", round_to=2), make_context(IMG)
    )
    conv3 = space.site("conv3").choices
    assert any(isinstance(c, int) for c in conv3) and any(str(c).startswith("spatial:") for c in conv3)
    assert "spatial:4" not in space.site("fc").choices  # a linear has one scheme


def test_choices_follow_the_profile_channel_multiple():
    space = LOWRANK.space(_model(WideMLP), LowRankConfig(energy=0.9), make_context(VEC))  # host: 16
    assert space.site("fc1").choices == (16, "dense")


def test_with_assignment_pins_every_site_by_exact_name():
    config = LowRankConfig(params_ratio=0.6, round_to=4)
    pinned = config.with_assignment({"fc1": 8, "fc2": "dense"})
    assert pinned.ranks == (("fc1", 8), ("fc2", "dense")) and pinned.params_ratio == 0.6
    result = apply(_model(WideMLP), pinned, make_context(VEC))
    assert result.module.fc1.rank == 8 and not isinstance(result.module.fc2, Factorized)
    assert result.decisions == {"fc1": 8, "fc2": "dense"}


def test_ranks_win_over_layer_ranks_and_a_pinned_rank_becomes_a_choice():
    config = LowRankConfig(layer_ranks={"fc*": 4}, ranks={"fc1": 7}, round_to=4)
    prepared = LOWRANK.prepare(_model(WideMLP), config, make_context(VEC))
    assert prepared.space.defaults() == {"fc1": 7, "fc2": 4}
    assert 7 in prepared.space.site("fc1").choices


def test_ranks_naming_an_unknown_layer_raise_recipe_error_listing_sites():
    with pytest.raises(RecipeError, match="fc9") as info:
        LOWRANK.prepare(_model(WideMLP), LowRankConfig(ranks={"fc9": 4}), make_context(VEC))
    assert "fc1" in info.value.fix


def test_ranks_with_a_scheme_the_layer_lacks_raise_recipe_error():
    with pytest.raises(RecipeError, match="spatial:4"):
        LOWRANK.prepare(_model(WideMLP), LowRankConfig(ranks={"fc1": "spatial:4"}), make_context(VEC))


def test_assignment_with_an_unoffered_choice_raises_recipe_error():
    prepared = LOWRANK.prepare(_model(WideMLP), LowRankConfig(params_ratio=0.6, round_to=4), make_context(VEC))
    with pytest.raises(RecipeError, match="fc1"):
        LOWRANK.apply_assignment(prepared, {"fc1": 5})


def test_apply_assignment_reuses_the_cached_svds_and_leaves_them_unchanged(monkeypatch):
    import repfx_deploy.passes.lowrank.factorize as factorize

    prepared = LOWRANK.prepare(_model(WideMLP), LowRankConfig(params_ratio=0.6, round_to=4), make_context(VEC))
    work, svd = snapshot(prepared.work), prepared.candidates["fc1"].svds["linear"].u.clone()

    def no_svd(*args, **kwargs):
        raise AssertionError("apply_assignment recomputed an SVD")

    monkeypatch.setattr(factorize, "svd", no_svd)
    for rank in (4, 20, 12):
        assert LOWRANK.apply_assignment(prepared, {"fc1": rank}).module.fc1.rank == rank
    assert all(torch.equal(v, prepared.work.state_dict()[k]) for k, v in work.items())
    assert torch.equal(svd, prepared.candidates["fc1"].svds["linear"].u)


def test_profile_from_a_file_sets_the_rank_multiple(tmp_path):
    from repfx_deploy.targets import load_profile_file

    path = tmp_path / "board.toml"
    path.write_text(
        'name = "board"\ndescription = "a test board"\nchannel_multiple = 4\n'
        '[tvm_target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n'
    )
    profile = load_profile_file(path)
    config = parse_pass({"kind": "lowrank", "params_ratio": 0.6}, 0)
    context = make_context(VEC, profile=profile)
    result = apply(_model(WideMLP), config, context)
    assert result.extras["round_to"] == 4 and result.module.fc1.rank % 4 == 0
    assert LOWRANK.space(_model(WideMLP), config, context).site("fc2").choices == (4, 8, 12, "dense")
