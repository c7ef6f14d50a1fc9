"""Stream a video through a forward-only STORM temporal encoder, a few frames at a time.

Each chunk costs the same whatever came before: every Mamba layer carries its scan and convolution
state to the next call. The result equals encoding all frames at once.

    python examples/stream_forward_only.py [--frames 64] [--chunk 4] [--repeats 7]

The stream is run once to warm up, then `--repeats` times; the time of each chunk is the median over
the repeats, so that one slow moment of a shared machine does not show as a slow chunk.
"""

import argparse
import statistics
import time

import torch

from storm_hf import StormConfig, StormForConditionalGeneration

parser = argparse.ArgumentParser()
parser.add_argument("--frames", type=int, default=64)
parser.add_argument("--chunk", type=int, default=4, help="frames per call")
parser.add_argument("--repeats", type=int, default=7)
args = parser.parse_args()

torch.manual_seed(0)
config = StormConfig.from_preset("tiny", temporal_bidirectional=False)  # the paper's Table 7 variant
model = StormForConditionalGeneration(config).eval()
encoder = model.model.temporal_encoder
video = torch.randn(args.frames, 3, 32, 32)  # (frames, 3, H, W), already normalised


def stream(tokens):
    """The whole video chunk by chunk; returns the outputs (1, frames * N, dim) and each chunk's seconds."""
    state, outputs, seconds = None, [], []  # no state: the stream starts with the first chunk
    for start in range(0, tokens.shape[0], args.chunk):
        chunk = tokens[start : start + args.chunk].reshape(1, -1, tokens.shape[-1])  # (1, chunk * N, dim)
        began = time.perf_counter()
        out, state = encoder.stream(chunk, state)
        seconds.append(time.perf_counter() - began)
        outputs.append(out)
    return torch.cat(outputs, dim=1), seconds


with torch.inference_mode():
    tokens = model.model.encode_frames(video)  # (frames, tokens_per_frame, dim)
    frames, per_frame, dim = tokens.shape
    whole = encoder(tokens.reshape(1, frames * per_frame, dim))
    stream(tokens)  # warm-up
    runs = [stream(tokens) for _ in range(args.repeats)]

streamed = runs[-1][0]
per_chunk = [statistics.median(run[1][i] for run in runs) for i in range(len(runs[0][1]))]
quarter = max(1, len(per_chunk) // 4)
first, last = statistics.median(per_chunk[:quarter]), statistics.median(per_chunk[-quarter:])
print(f"{frames} frames in chunks of {args.chunk} ({args.chunk * per_frame} tokens per call), "
      f"median of {args.repeats} runs after a warm-up:")
for i in range(0, len(per_chunk), max(1, len(per_chunk) // 4)):
    print(f"  frames {i * args.chunk:3d}-{i * args.chunk + args.chunk - 1:3d}: {1000 * per_chunk[i]:.2f} ms")
print(f"last quarter of the stream / first quarter, per chunk: {last / first:.2f}x (constant cost: about 1)")
print("max difference between streamed and one-call outputs:", (streamed - whole).abs().max().item())
