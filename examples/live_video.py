"""Live video: push frames to a forward-only STORM as they arrive and ask about them at any moment.

    python examples/live_video.py

`model.live_session(processor)` carries the temporal encoder's state and keeps the LLM's cache of the video
so far: each push costs the same however long the stream is, and a question is answered on top of the cached
video (the frames are never read again). The model is the bundled one's image encoder and LLM with a
forward-only temporal layer (`bundled_forward_only`); the video, a generated benchmark clip.
"""

import tempfile

from storm_hf.inference import load
from storm_hf.miniature import bundled_forward_only
from storm_hf.miniature.temporal_qa import clip_rng, make_clip

with tempfile.TemporaryDirectory() as folder:
    model, processor = load(bundled_forward_only(folder))

clip = make_clip(clip_rng("test", 0, 0), "direction")  # 16 frames of 48 x 48 RGB, uint8
session = model.live_session(processor)
for number, frame in enumerate(clip.frames, start=1):
    session.push(frame[None])  # (1, height, width, 3): one frame as it arrives
    if number in (8, 16):
        print(f"after {number} frames: {clip.question} -> {session.ask(clip.question)}")
print(f"expected: {clip.answer}; the cache holds {session.cache.get_seq_length()} tokens of video and prompt")
