# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""storm_hf: STORM (a video LLM with a Mamba temporal encoder) in Hugging Face transformers conventions.

Importing the package registers the classes with AutoConfig, AutoModel, AutoModelForImageTextToText and
AutoModelForMultimodalLM (the model class of transformers' "any-to-any" pipeline), AutoProcessor and
AutoVideoProcessor.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM, AutoProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .configuration_storm import StormConfig, num_video_tokens
from .modeling_storm import (
    MambaMixerState,
    StormForConditionalGeneration,
    StormLiveSession,
    StormMambaMixer,
    StormModel,
    StormPreTrainedModel,
    StormTemporalEncoder,
    StormVideoFeatures,
)
from .selective_scan import selective_scan_sequential, selective_scan_torch
from .video_io import VideoReadError, probe_video, read_frames, sample_frame_indices
from .processing_storm import StormProcessor
from .video_processing_storm import StormVideoProcessor
from . import _moved


__version__ = "0.1.0"

AutoConfig.register(StormConfig.model_type, StormConfig, exist_ok=True)
AutoModel.register(StormConfig, StormModel, exist_ok=True)
AutoModelForImageTextToText.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
# pipeline("any-to-any") loads and checks models through AutoModelForMultimodalLM (as LLaVA-OneVision and Qwen2-VL).
AutoModelForMultimodalLM.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
# The top-level AutoVideoProcessor is guarded by a torchvision requirement; the class itself registers fine.
AutoVideoProcessor.register(StormConfig, StormVideoProcessor, exist_ok=True)
AutoProcessor.register(StormConfig, StormProcessor, exist_ok=True)
# save_pretrained also writes the flat source files and an auto_map, so that a checkpoint loads with
# trust_remote_code=True where storm_hf is not installed (as on the Hub).
StormConfig.register_for_auto_class()
StormModel.register_for_auto_class("AutoModel")
# A class holds one `_auto_class`; the checkpoint's auto_map also names StormForConditionalGeneration for
# AutoModelForMultimodalLM (StormCheckpointMixin._remote_auto_map, written by save_pretrained).
StormForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
StormProcessor.register_for_auto_class("AutoProcessor")
StormVideoProcessor.register_for_auto_class("AutoVideoProcessor")
# storm_hf 0.1's module paths (storm_hf.demo, storm_hf.miniature.temporal_qa, ...) import from their new places, with a warning.
_moved.install()

__all__ = [
    "StormConfig",
    "StormModel",
    "StormForConditionalGeneration",
    "StormPreTrainedModel",
    "StormMambaMixer",
    "StormTemporalEncoder",
    "MambaMixerState",
    "StormLiveSession",
    "StormVideoFeatures",
    "num_video_tokens",
    "selective_scan_torch",
    "selective_scan_sequential",
    "StormVideoProcessor",
    "StormProcessor",
    "VideoReadError",
    "probe_video",
    "read_frames",
    "sample_frame_indices",
]
