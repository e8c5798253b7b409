"""What SliceGPTConfig accepts and the widths it keeps."""

from __future__ import annotations

import pytest

from repfx_deploy.passes.slicegpt.config import SliceGPTConfig


@pytest.mark.parametrize(("slicing", "hidden", "kept"), [(0.0, 576, 576), (0.1, 576, 512), (0.25, 576, 432), (0.3, 576, 400), (0.25, 384, 288), (0.99, 64, 8)])
def test_kept_dim_rounds_down_to_a_multiple_of_round_to(slicing, hidden, kept):
    assert SliceGPTConfig(slicing=slicing).kept_dim(hidden) == kept


@pytest.mark.parametrize("bad", [{"slicing": 1.0}, {"slicing": -0.1}, {"slicing": True}, {"round_to": 0}, {"batch_size": 2.5}, {"token_weighting": "median"}, {"slice_head": 1}])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        SliceGPTConfig(**bad)


def test_stream_widths_keep_the_last_stream_whole_when_the_head_is_not_sliced():
    assert SliceGPTConfig(slicing=0.25, slice_head=False).stream_widths(576, 4) == [432, 432, 432, 432, 576]
    assert SliceGPTConfig(slicing=0.25).stream_widths(576, 2) == [432, 432, 432]
