# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Playing a video file to a `StormLiveSession` as if it were live: frames pushed in time order (optionally at
the video's own pace), questions asked at set times. `storm-hf demo --live VIDEO` and examples/live_video.py
use it."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class LiveAnswer:
    """One question asked during playback."""

    at_seconds: float  # the video time it was asked at
    frames_seen: int
    question: str
    answer: str
    seconds: float  # how long asking took (the cached video is not read again)


def parse_asks(items, default_question=None) -> list[tuple[float, str]]:
    """``["5:which way ...", "12.5:what shape ..."]`` -> [(5.0, "which way ..."), ...] sorted by time; a
    ``default_question`` is asked at the end (time inf). A ValueError names an item that is not TIME:QUESTION."""
    asks = []
    for item in items or []:
        at, _, question = item.partition(":")
        try:
            seconds = float(at)
        except ValueError:
            seconds = -1.0
        if seconds < 0 or not question.strip():
            raise ValueError(f"--ask {item!r}: give SECONDS:QUESTION, e.g. '3:which way does the square move ?'.")
        asks.append((seconds, question.strip()))
    if default_question:
        asks.append((float("inf"), default_question))
    if not asks:
        raise ValueError("give a question: --ask SECONDS:QUESTION (repeatable) or --question (asked at the end).")
    return sorted(asks, key=lambda pair: pair[0])


def play_live(model, processor, video, asks, fps: float = 4.0, realtime: bool = False, max_new_tokens: int = 8,
              on_answer=None):
    """Push the frames of ``video`` (a path or URL, sampled ``fps`` frames a second) one by one to a live
    session of ``model`` and ask each ``(seconds, question)`` of ``asks`` once the video reaches it (those
    past the end at the end). ``realtime``: wait so that frames arrive at the video's own pace. Returns the
    `LiveAnswer`s and the seconds each push took."""
    session = model.live_session(processor)  # a ValueError for a model that cannot stream
    chunks = processor.video_chunks(video, chunk_frames=16, fps=fps)
    pending = list(asks)
    answers, push_seconds = [], []
    started = time.perf_counter()

    def ask_due(now_seconds, at_end=False):
        while pending and (at_end or pending[0][0] <= now_seconds):
            at, question = pending.pop(0)
            start = time.perf_counter()
            answer = session.ask(question, max_new_tokens=max_new_tokens)
            result = LiveAnswer(min(at, now_seconds), session.frames_seen, question, answer,
                                time.perf_counter() - start)
            answers.append(result)
            if on_answer is not None:
                on_answer(result)

    timestamps = iter(chunks.timestamps)
    last = 0.0
    try:
        for pixels in chunks:  # (frames, 3, H, W)
            for frame in pixels:
                at = float(next(timestamps))
                if realtime:
                    time.sleep(max(0.0, at - (time.perf_counter() - started)))
                ask_due(at)  # a question asked at t sees the frames shown before t
                start = time.perf_counter()
                session.push(frame[None])
                push_seconds.append(time.perf_counter() - start)
                last = at
    finally:
        chunks.close()
    ask_due(last, at_end=True)  # questions past the end: at the last frame
    return answers, push_seconds
