import pytest
import torch

import storm_hf  # noqa: F401  (registers the Auto classes)
from storm_hf import StormConfig, StormForConditionalGeneration


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**overrides) -> StormConfig:
    return StormConfig.from_preset("tiny", **overrides)


def tiny_model(**overrides) -> StormForConditionalGeneration:
    torch.manual_seed(0)
    return StormForConditionalGeneration(tiny_config(**overrides)).eval()


def video_prompt(config: StormConfig, frame_counts, prefix=(1, 2), suffix=(3, 4)):
    """input_ids (1, seq) with one expanded placeholder run per video."""
    ids = list(prefix)
    for frames in frame_counts:
        ids += [config.video_token_id] * config.num_visual_tokens(frames) + [5]
    return torch.tensor([ids + list(suffix)])
