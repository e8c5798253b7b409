"""What SliceGPTConfig accepts and the widths it keeps."""

from __future__ import annotations

import pytest

from repfx_deploy.passes.slicegpt.config import SliceGPTConfig


@pytest.mark.parametrize(("slicing", "hidden", "kept"), [(0.0, 576, 576), (0.1, 576, 512), (0.25, 576, 432), (0.3, 576, 400), (0.25, 384, 288), (0.99, 64, 8)])
def test_kept_dim_rounds_down_to_a_multiple_of_round_to(slicing, hidden, kept):
    assert SliceGPTConfig(slicing=slicing).kept_dim(hidden) == kept


@pytest.mark.parametrize("bad", [{"slicing": 1.0}, {"slicing": -0.1}, {"slicing": True}, {"round_to": 0}, {"batch_size": 2.5}, {"token_weighting": "median"}, {"slice_head": 1}, {"keep_first_layers": -1}, {"keep_last_layers": 1.0}])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        SliceGPTConfig(**bad)


def test_stream_widths_keep_the_last_stream_whole_when_the_head_is_not_sliced():
    assert SliceGPTConfig(slicing=0.25, slice_head=False).stream_widths(576, 4) == [432, 432, 432, 432, 576]
    assert SliceGPTConfig(slicing=0.25).stream_widths(576, 2) == [432, 432, 432]


def test_stream_widths_keep_every_stream_the_end_layers_read_or_write():
    config = SliceGPTConfig(slicing=0.25, keep_first_layers=1, keep_last_layers=1)
    # 3 layers: layer 0 reads stream 0 and writes 1, 2; layer 2 reads 4 and writes 5, 6
    assert config.stream_widths(576, 6) == [576, 576, 576, 432, 576, 576, 576]
    assert SliceGPTConfig(slicing=0.25, keep_first_layers=2).stream_widths(576, 6) == [576, 576, 576, 576, 576, 432, 432]
    assert SliceGPTConfig(slicing=0.25).stream_widths(576, 4) == [432] * 5
