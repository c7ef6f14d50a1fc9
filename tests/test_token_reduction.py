"""Pure functions: pixel shuffle, temporal/spatial pooling, test-time sampling, and their token counts."""

import itertools

import pytest
import torch

from storm_hf.configuration_storm import num_video_tokens
from storm_hf.modeling_storm import (
    pixel_shuffle,
    reduce_visual_tokens,
    spatial_pool,
    temporal_pool,
    temporal_sample_indices,
)


def test_pixel_shuffle_concatenates_each_2x2_block_in_raster_order():
    grid = torch.arange(16.0).view(1, 16, 1)  # 4x4 grid, token value = its raster index
    out = pixel_shuffle(grid, grid_size=4, ratio=2)
    assert out.shape == (1, 4, 4)
    assert out[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_pixel_shuffle_paper_shape_and_bad_grid():
    assert pixel_shuffle(torch.zeros(2, 1024, 1152), 32, 2).shape == (2, 256, 4608)
    with pytest.raises(ValueError, match="pixel_shuffle"):
        pixel_shuffle(torch.zeros(1, 15, 3), 4, 2)


def test_temporal_pool_averages_groups_and_keeps_a_partial_last_group():
    frames = torch.arange(7.0).view(1, 7, 1, 1)  # frame value = its index
    pooled = temporal_pool(frames, 3)
    assert pooled.flatten().tolist() == [1.0, 4.0, 6.0]  # mean(0,1,2), mean(3,4,5), mean(6)
    assert temporal_pool(frames, 1) is frames


def test_spatial_pool_averages_windows_and_partial_edges():
    grid = torch.arange(9.0).view(1, 1, 9, 1)  # 3x3 grid
    pooled = spatial_pool(grid, grid_size=3, p=2)
    # windows: {0,1,3,4}, {2,5}, {6,7}, {8}
    assert pooled.flatten().tolist() == [2.0, 3.5, 6.5, 8.0]


def test_temporal_sample_indices():
    assert temporal_sample_indices(7, 2).tolist() == [0, 2, 4, 6]
    assert temporal_sample_indices(7, 1).tolist() == list(range(7))


def test_sampling_happens_after_pooling():
    frames = torch.arange(8.0).view(1, 8, 1, 1)
    out = reduce_visual_tokens(frames, grid_size=1, k=2, p=1, s=2)
    assert out.flatten().tolist() == [0.5, 4.5]  # pooled (0.5, 2.5, 4.5, 6.5), then every 2nd


@pytest.mark.parametrize("k,p,s", list(itertools.product([1, 2, 4], [1, 2, 3], [1, 2, 3])))
@pytest.mark.parametrize("frames", [1, 3, 8, 9])
def test_reduced_shape_matches_token_count(k, p, s, frames):
    grid = 4
    x = torch.randn(2, frames, grid * grid, 5)
    out = reduce_visual_tokens(x, grid, k, p, s)
    assert out.shape[0] == 2 and out.shape[-1] == 5
    assert out.shape[1] * out.shape[2] == num_video_tokens(frames, grid, k, p, s)
