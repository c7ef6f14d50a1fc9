# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Prompts with their video placeholders expanded, and precomputed visual features in the form `generate()` and
`forward()` take (``mm_encoder_outputs``): the evaluation and the lmms-eval model build their inputs so."""

from __future__ import annotations


def video_question_prompt(processor, question: str) -> str:
    """The processor's chat template for one user turn, a video then ``question``, ready for the answer."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def expanded_prompt_ids(processor, text: str, frame_count: int | None) -> list[int]:
    """Token ids of a prompt, as the processor tokenizes it, whose one video placeholder becomes the processor's
    token count for ``frame_count`` frames (None: a prompt without a video)."""
    if frame_count is not None:
        if text.count(processor.video_token) != 1:
            raise ValueError("A record to evaluate with a video needs exactly one video placeholder in its prompt.")
        text = text.replace(processor.video_token, processor.video_token * processor.num_visual_tokens(frame_count))
    return processor.tokenizer(text)["input_ids"]


def video_outputs(features):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    clips = [f for f in features if f is not None]
    return {"video": BaseModelOutputWithPooling(pooler_output=clips)} if clips else None
