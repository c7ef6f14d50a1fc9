"""Stream a video through a forward-only STORM temporal encoder, a few frames at a time.

Each chunk costs the same whatever came before: every Mamba layer carries its scan and convolution
state to the next call. The result equals encoding all frames at once.

    python examples/stream_forward_only.py
"""

import time

import torch

from storm_hf import StormConfig, StormForConditionalGeneration

torch.manual_seed(0)
config = StormConfig.from_preset("tiny", temporal_bidirectional=False)  # the paper's Table 7 variant
model = StormForConditionalGeneration(config).eval()
video = torch.randn(64, 3, 32, 32)  # (frames, 3, H, W), already normalised

with torch.inference_mode():
    tokens = model.model.encode_frames(video)  # (frames, tokens_per_frame, dim)
    frames, per_frame, dim = tokens.shape
    whole = model.model.temporal_encoder(tokens.reshape(1, frames * per_frame, dim))

    state, chunks = model.model.temporal_encoder.init_state(batch_size=1), []
    for start in range(0, frames, 4):  # 4 frames per call
        chunk = tokens[start : start + 4].reshape(1, -1, dim)
        began = time.perf_counter()
        out, state = model.model.temporal_encoder(chunk, state=state, return_state=True)
        chunks.append(out)
        if start % 16 == 0:
            print(f"frames {start:2d}-{start + 3:2d}: {1000 * (time.perf_counter() - began):.2f} ms")

streamed = torch.cat(chunks, dim=1)
print("max difference between streamed and one-call outputs:", (streamed - whole).abs().max().item())
