# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""What the applications, the evaluation and the integrations share to run a STORM: loading a model
(`load`), the token reduction set on a model and its processor together (`set_token_reduction`,
`following_the_model`), prompts with their placeholders expanded and precomputed features (`expanded_prompt_ids`,
`video_outputs`), and asking about one video stage by stage with the time of each (`ask`, `TokenClock`).

It sits above the model and the miniature (the bundled model is `load`'s default) and below training,
evaluation, the apps and the integrations."""

from .asking import DemoAnswer, SampledVideo, TokenClock, ask, sample_video, unknown_words
from .loading import load
from .prompts import expanded_prompt_ids, video_outputs, video_question_prompt
from .settings import check_agreement, following_the_model, set_sampling_stride, set_token_reduction

__all__ = ["load", "ask", "sample_video", "DemoAnswer", "SampledVideo", "TokenClock", "unknown_words",
           "set_token_reduction", "following_the_model", "set_sampling_stride", "check_agreement",
           "expanded_prompt_ids", "video_outputs", "video_question_prompt"]
