# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""storm_hf: STORM (a video LLM with a Mamba temporal encoder) in Hugging Face transformers conventions.

Importing the package registers the classes with AutoConfig, AutoModel and AutoModelForImageTextToText.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_storm import StormConfig, num_video_tokens
from .modeling_storm import (
    MambaMixerState,
    StormForConditionalGeneration,
    StormMambaMixer,
    StormModel,
    StormPreTrainedModel,
    StormTemporalEncoder,
)
from .selective_scan import selective_scan_sequential, selective_scan_torch


__version__ = "0.1.0"

AutoConfig.register(StormConfig.model_type, StormConfig, exist_ok=True)
AutoModel.register(StormConfig, StormModel, exist_ok=True)
AutoModelForImageTextToText.register(StormConfig, StormForConditionalGeneration, exist_ok=True)

__all__ = [
    "StormConfig",
    "StormModel",
    "StormForConditionalGeneration",
    "StormPreTrainedModel",
    "StormMambaMixer",
    "StormTemporalEncoder",
    "MambaMixerState",
    "num_video_tokens",
    "selective_scan_torch",
    "selective_scan_sequential",
]
