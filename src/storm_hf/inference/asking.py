# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Asking a STORM about one video, stage by stage: sampling and decoding the file as the processor would, the
model's own stage methods (`StormModel.vision_patch_features`, `projector`, `encode_in_time`, `reduce_tokens`)
timed one by one, and the LLM through `generate()` with a streamer that notes when each token comes out. The
demo, the web page and the README's snippets use it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .prompts import video_question_prompt


@dataclass
class DemoAnswer:
    """What one question gave: the answer, the frames used, token counts and seconds per stage."""

    answer: str
    frame_indices: list
    timestamps: list
    tokens_before: int
    tokens_after: int
    seconds: dict = field(default_factory=dict)
    new_tokens: int = 0


class TokenClock:
    """A `generate()` streamer that notes when the prompt goes in and when each new token comes out, and hands
    each new token's ids to ``on_token`` when given."""

    def __init__(self, on_token=None):
        self.times = []
        self.on_token = on_token

    def put(self, value):
        self.times.append(time.perf_counter())
        if self.on_token is not None and len(self.times) > 1:  # the first put is the prompt
            self.on_token(value.reshape(-1).tolist())

    def end(self):
        pass


@dataclass
class SampledVideo:
    """The frames sampled from a video file, as `StormVideoProcessor` samples them."""

    frames: np.ndarray  # (frames, height, width, 3) uint8 RGB, at the video's own size
    indices: list  # the frames' indices in the video
    timestamps: list  # their presentation times, seconds from the first frame
    total_frames: int  # frames in the video
    duration: float  # seconds
    before_budget: int  # frames the sampling asked for before ``max_frames`` thinned them (>= len(indices))


def sample_video(processor, source, num_frames=None, fps=None, max_frames=None, progress=None,
                 index=None) -> SampledVideo:
    """Sample and decode a video file (path, http(s) or file:// URL, bytes or binary file) the way ``processor``
    would: ``num_frames`` evenly or ``fps`` frames a second (neither: the processor's defaults), at most
    ``max_frames`` (None: the processor's). ``progress``: as in `video_io.read_frames` (a callable gets
    ``(frames done, frames in all)``). ``index``: the video's `probe_video` index, when the caller has it."""
    from ..processing_storm import file_sampling
    from ..video_io import local_source, probe_video, read_frames

    sampler = processor.video_processor
    # checked before a download or a decode
    num_frames, fps, max_frames = file_sampling(sampler, num_frames, fps, max_frames, "sample_video")
    with local_source(source) as source:  # a URL: downloaded once, for the probe and the read
        index = index if index is not None else probe_video(source)
        wanted = sampler.sample_frames(None, num_frames, fps, None, timestamps=index.timestamps)
        indices = sampler.sample_frames(None, num_frames, fps, max_frames, timestamps=index.timestamps)
        frames, timestamps, _ = read_frames(source, indices, index=index, progress=progress)
    return SampledVideo(frames, indices.tolist(), [float(t) for t in timestamps], index.total_frames,
                        float(index.duration), len(wanted))


def _is_file(video) -> bool:
    return isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read")


@torch.inference_mode()
def ask(model, processor, video, question: str, num_frames: int | None = None, max_new_tokens: int = 8, *,
        fps: float | None = None, max_frames: int | None = None, on_event=None,
        chunk_frames: int | None = None) -> DemoAnswer:
    """Answer ``question`` about ``video``, stage by stage.

    Args:
        video: a video file (path, http(s) or file:// URL, bytes, binary file), a `SampledVideo`, or frames the
            processor takes.
        question: the question; an empty or blank one raises a ValueError.
        num_frames / fps / max_frames: how frames are sampled (None: the processor's settings).
        on_event: called as ``on_event(kind, value)`` while the answer is made: ``("decoding", (done, total))``
            as frames decode, ``("sampled", SampledVideo)`` once a file is decoded, ``("tokens", (before,
            after))`` after token reduction, and ``("text", answer so far)`` as each new token comes out.
        chunk_frames: for a file whose sampling gives more frames than this, the long-video path: decoded,
            encoded and reduced ``chunk_frames`` at a time (`StormProcessor.video_chunks`,
            `StormModel.encode_video`), never all its pixels at once; the stages are then timed as one
            ("decode + visual path") and no ``"sampled"`` event comes (``("decoding", ...)`` counts frames encoded).
    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"ask: the question is empty ({question!r}); give a question about the video.")
    tell = on_event or (lambda kind, value: None)
    seconds = {}
    prompt = video_question_prompt(processor, question)
    start = time.perf_counter()
    decoding = lambda done, total: tell("decoding", (done, total))  # noqa: E731
    if chunk_frames is not None and _is_file(video):
        from ..video_io import local_source, probe_video

        sampling = {"num_frames": num_frames, "fps": fps, "max_frames": max_frames}
        with local_source(video) as source:  # one download and one probe, whichever path is taken
            index = probe_video(source)
            chunks = processor.video_chunks(source, chunk_frames=chunk_frames, index=index, **sampling)
            if chunks.num_frames > chunk_frames:
                return _ask_in_chunks(model, processor, chunks, prompt, max_new_tokens, on_event, start)
            chunks.close()
            video = sample_video(processor, source, progress=decoding, index=index, **sampling)
    if isinstance(video, SampledVideo) or _is_file(video):
        sampled = video if isinstance(video, SampledVideo) else sample_video(
            processor, video, num_frames, fps, max_frames, progress=decoding)
        tell("sampled", sampled)
        inputs = processor(text=prompt, videos=[sampled.frames], do_sample_frames=False, return_tensors="pt")
        indices, timestamps = sampled.indices, sampled.timestamps
    else:
        sampling = {k: v for k, v in (("num_frames", num_frames), ("fps", fps), ("max_frames", max_frames))
                    if v is not None}  # num_frames=0 is refused by the processor, not dropped
        inputs = processor(text=prompt, videos=[video], return_metadata=True, return_tensors="pt", **sampling)
        metadata = inputs["video_metadata"][0]
        indices, timestamps = list(metadata.frames_indices), list(metadata.timestamps or [])
    seconds["video decode"] = time.perf_counter() - start
    stages = model.model
    frames = inputs["pixel_values_videos"][0, : int(inputs["video_num_frames"][0])].to(model.device, model.dtype)

    start = time.perf_counter()
    patches = stages.vision_patch_features(frames)  # (frames, patches, vision_dim), in micro-batches
    seconds["vision tower"] = time.perf_counter() - start
    start = time.perf_counter()
    tokens = stages.projector(patches)  # (frames, tokens per frame, dim)
    seconds["projector"] = time.perf_counter() - start
    start = time.perf_counter()
    encoded = stages.encode_in_time([tokens])[0]  # (frames, tokens per frame, dim)
    seconds["temporal encoder"] = time.perf_counter() - start
    start = time.perf_counter()
    reduced = stages.reduce_tokens(encoded[None])[0]  # (frames', tokens', dim)
    seconds["token reduction"] = time.perf_counter() - start
    features = reduced.flatten(0, 1)  # (visual tokens, dim): what the placeholders receive
    tokens_before, tokens_after = int(tokens.shape[0] * tokens.shape[1]), int(features.shape[0])
    tell("tokens", (tokens_before, tokens_after))

    placed = BaseModelOutputWithPooling(pooler_output=[features])
    answer, new_tokens = _generate_answer(model, processor, inputs, placed, max_new_tokens, on_event, seconds)
    return DemoAnswer(answer=answer, frame_indices=indices, timestamps=timestamps, tokens_before=tokens_before,
                      tokens_after=tokens_after, seconds=seconds, new_tokens=new_tokens)


def _generate_answer(model, processor, inputs, features, max_new_tokens, on_event, seconds):
    """`generate` on ``inputs`` with the video ``features`` placed, timed into ``seconds`` ("LLM prefill",
    "decode"); each new token reaches ``on_event`` as ``("text", answer so far)`` when it is given. Returns the
    answer and the number of new tokens."""
    new_ids = []

    def on_token(ids):
        new_ids.extend(ids)
        on_event("text", processor.decode(new_ids, skip_special_tokens=True).strip())

    clock = TokenClock(on_token if on_event else None)
    output = model.generate(
        input_ids=inputs["input_ids"].to(model.device), attention_mask=inputs["attention_mask"].to(model.device),
        mm_encoder_outputs={"video": features}, max_new_tokens=max_new_tokens, do_sample=False, streamer=clock,
    )
    new = output[0, inputs["input_ids"].shape[1]:]
    # clock.times: [prompt given, first new token, second, ...]
    seconds["LLM prefill"] = clock.times[1] - clock.times[0]
    seconds["decode"] = clock.times[-1] - clock.times[1] if len(clock.times) > 2 else 0.0
    return processor.decode(new, skip_special_tokens=True).strip(), max(0, len(clock.times) - 1)


def _ask_in_chunks(model, processor, chunks, prompt, max_new_tokens, on_event, start) -> DemoAnswer:
    """`ask`'s long-video path: ``chunks`` (a `VideoChunks`) through `encode_video`, then `generate`."""
    tell = on_event or (lambda kind, value: None)
    try:
        features = model.encode_video(chunks, progress=lambda done, total: tell("decoding", (done, total)))
    finally:
        chunks.close()
    seconds = {"decode + visual path": time.perf_counter() - start}
    tokens_before = chunks.num_frames * model.config.tokens_per_frame
    tokens_after = int(features.pooler_output[0].shape[0])
    tell("tokens", (tokens_before, tokens_after))
    inputs = processor(text=prompt, video_num_frames=features.video_num_frames, return_tensors="pt")
    answer, new_tokens = _generate_answer(model, processor, inputs, features, max_new_tokens, on_event, seconds)
    return DemoAnswer(answer=answer, frame_indices=[int(i) for i in chunks.indices],
                      timestamps=[float(t) for t in chunks.timestamps], tokens_before=tokens_before,
                      tokens_after=tokens_after, seconds=seconds, new_tokens=new_tokens)


def unknown_words(processor, question: str) -> list[str]:
    unknown = processor.tokenizer.unk_token_id
    if unknown is None:
        return []
    words = question.split()
    return [w for w in words if processor.tokenizer.convert_tokens_to_ids(w) == unknown]
