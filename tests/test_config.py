import math

import pytest
from transformers import AutoConfig, Qwen2Config, SiglipVisionConfig

from storm_hf import StormConfig, num_video_tokens

from .conftest import tiny_config


def test_defaults_are_the_paper_7b_layout():
    config = StormConfig()
    assert isinstance(config.vision_config, SiglipVisionConfig)
    assert (config.vision_config.hidden_size, config.vision_config.patch_size, config.vision_config.image_size) == (1152, 14, 448)
    assert isinstance(config.text_config, Qwen2Config)
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (3584, 28)
    assert config.downsample_ratio == 2 and config.grid_size == 16 and config.tokens_per_frame == 256
    assert (config.temporal_pool_k, config.spatial_pool_p, config.temporal_sample_s) == (4, 1, 1)
    assert config.temporal_bidirectional
    assert StormConfig.from_preset("storm-7b").to_dict() == config.to_dict()


def test_sub_configs_resolve_from_dicts_with_model_type():
    config = StormConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=56, patch_size=14, hidden_size=16,
                           intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=100),
    )
    assert type(config.vision_config).__name__ == "CLIPVisionConfig"
    assert type(config.text_config).__name__ == "LlamaConfig"
    assert config.grid_size == 2


def test_save_and_load_round_trip(tmp_path):
    config = tiny_config(temporal_pool_k=2, spatial_pool_p=2, temporal_sample_s=3, temporal_bidirectional=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, StormConfig)
    drop = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert drop(loaded.to_dict()) == drop(config.to_dict())


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("frames", [1, 2, 5, 8, 13])
def test_num_visual_tokens_formula(k, p, s, frames):
    config = tiny_config(temporal_pool_k=k, spatial_pool_p=p, temporal_sample_s=s)
    expected = math.ceil(math.ceil(frames / k) / s) * math.ceil(config.grid_size / p) ** 2
    assert config.num_visual_tokens(frames) == expected
    assert num_video_tokens(frames, config.grid_size, k, p, s) == expected


def test_paper_token_budgets():
    config = StormConfig()
    assert config.num_visual_tokens(32) == 8 * 256  # k = 4
    assert StormConfig(temporal_pool_k=1).num_visual_tokens(32) == 32 * 256  # the 8K training budget
    assert StormConfig(temporal_pool_k=4, temporal_sample_s=2).num_visual_tokens(256) == 256 * 256 // 8
    assert StormConfig(temporal_pool_k=1, spatial_pool_p=2).num_visual_tokens(1) == 64
    assert config.num_visual_tokens(1) == 256  # an image


@pytest.mark.parametrize(
    "bad",
    [dict(temporal_pool_k=0), dict(spatial_pool_p=-1), dict(temporal_sample_s=1.5), dict(temporal_num_layers=-1),
     dict(temporal_dt_rank="big"), dict(downsample_ratio=3), dict(temporal_direction_merge="max"),
     dict(temporal_bidirectional="yes"), dict(temporal_norm_eps=0.0), dict(temporal_norm_eps="x")],
)
def test_invalid_fields_raise(bad):
    with pytest.raises(ValueError):
        tiny_config(**bad)


def test_num_frames_must_be_positive():
    with pytest.raises(ValueError, match="num_frames"):
        tiny_config().num_visual_tokens(0)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        StormConfig.from_preset("huge")
