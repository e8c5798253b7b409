"""What SliceGPTConfig accepts and the widths it keeps."""

from __future__ import annotations

import pytest

from repfx_deploy.errors import RecipeError
from repfx_deploy.passes.slicegpt.config import SliceGPTConfig, stream_names, stream_position


@pytest.mark.parametrize(
    ("slicing", "hidden", "kept"),
    [(0.0, 576, 576), (0.1, 576, 512), (0.25, 576, 432), (0.3, 576, 400), (0.25, 384, 288), (0.99, 64, 8)],
)
def test_kept_dim_rounds_down_to_a_multiple_of_round_to(slicing, hidden, kept):
    assert SliceGPTConfig(slicing=slicing).kept_dim(hidden, 8) == kept


@pytest.mark.parametrize(
    "bad",
    [
        {"slicing": 1.0},
        {"slicing": -0.1},
        {"slicing": True},
        {"round_to": 0},
        {"batch_size": 2.5},
        {"token_weighting": "median"},
        {"slice_head": 1},
        {"keep_first_layers": -1},
        {"keep_last_layers": 1.0},
        {"schedule": "cosine"},
        {"ramp": -0.1},
        {"schedule": "ramp", "slicing": 0.1, "ramp": 0.3},
        {"widths": (64, 0)},
        {"widths": [64, 64]},
    ],
)
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        SliceGPTConfig(**{"slicing": 0.25, **bad})


def test_config_needs_slicing_unless_widths_are_given():
    with pytest.raises(ValueError, match="slicing = 0.25"):
        SliceGPTConfig()
    assert SliceGPTConfig(widths=(64, 48, 48)).slicing is None


def test_round_to_when_set_wins_over_the_target_multiple():
    assert SliceGPTConfig(slicing=0.25).multiple(16) == 16
    assert SliceGPTConfig(slicing=0.25, round_to=8).multiple(16) == 8
    assert SliceGPTConfig(slicing=0.3).kept_dim(64, 16) == 32  # 44 rounded down to a multiple of 16


def test_stream_names_and_positions_follow_stream_order():
    names = stream_names(2)
    assert names == ["embed", "layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]
    assert [stream_position(n) for n in names] == list(range(5))
    with pytest.raises(ValueError, match="not a residual stream"):
        stream_position("layers.0.ffn")


def test_with_assignment_writes_widths_in_stream_order_whatever_the_assignment_order():
    config = SliceGPTConfig(slicing=0.25).with_assignment({"layers.0.mlp": 40, "embed": 64, "layers.0.attn": 48})
    assert config.widths == (64, 48, 40) and config.slicing == 0.25
    with pytest.raises(RecipeError, match="every stream"):
        SliceGPTConfig(slicing=0.25).with_assignment({"embed": 64, "layers.0.mlp": 40})


def test_stream_widths_keep_the_last_stream_whole_when_the_head_is_not_sliced():
    assert SliceGPTConfig(slicing=0.25, slice_head=False).stream_widths(576, 4, 8) == [432, 432, 432, 432, 576]
    assert SliceGPTConfig(slicing=0.25).stream_widths(576, 2, 8) == [432, 432, 432]


def test_stream_widths_keep_every_stream_the_end_layers_read_or_write():
    config = SliceGPTConfig(slicing=0.25, keep_first_layers=1, keep_last_layers=1)
    # 3 layers: layer 0 reads stream 0 and writes 1, 2; layer 2 reads 4 and writes 5, 6
    assert config.stream_widths(576, 6, 8) == [576, 576, 576, 432, 576, 576, 576]
    assert SliceGPTConfig(slicing=0.25, keep_first_layers=2).stream_widths(576, 6, 8) == [
        576,
        576,
        576,
        576,
        576,
        432,
        432,
    ]
    assert SliceGPTConfig(slicing=0.25).stream_widths(576, 4, 8) == [432] * 5


def test_ramp_slices_less_at_the_start_and_more_at_the_end_with_the_same_mean():
    widths = SliceGPTConfig(slicing=0.25, schedule="ramp", ramp=0.5).stream_widths(576, 60, 8)
    assert widths[0] == 576 and widths[-1] == 288  # slicing 0 .. 0.5
    assert widths == sorted(widths, reverse=True) and all(w % 8 == 0 for w in widths)
    assert sum(widths) / len(widths) == 432  # the uniform width at slicing 0.25


def test_ramp_spans_only_the_sliced_streams_when_end_layers_are_kept():
    widths = SliceGPTConfig(slicing=0.25, schedule="ramp", ramp=0.5, keep_first_layers=2).stream_widths(576, 60, 8)
    assert widths[:5] == [576] * 5 and widths[-1] == 288
    assert sum(widths[5:]) / 56 == 432


def test_explicit_widths_replace_the_schedule_and_must_fit_the_model():
    config = SliceGPTConfig(widths=(64, 48, 40, 48, 32))
    assert config.stream_widths(64, 4, 8) == [64, 48, 40, 48, 32]
    with pytest.raises(ValueError, match="5 streams"):
        config.stream_widths(64, 6, 8)
    with pytest.raises(ValueError, match="width 32"):
        config.stream_widths(32, 4, 8)
