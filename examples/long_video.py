"""A long video in bounded memory: decode, encode and reduce it chunk by chunk, then ask.

    python examples/long_video.py [VIDEO] [--num-frames 16 | --fps 1] [--chunk-frames 64]

`processor.video_chunks` samples the file as the processor would and hands out normalised pixels a chunk at a
time; `model.encode_video` runs each chunk through the image encoder and keeps only what the temporal encoder
needs (a forward-only model: the reduced tokens; a bidirectional one: the projector's tokens). The features go
to `generate` with a prompt expanded for their frame count. Without VIDEO, a 2-minute clip is generated.
The bundled model was trained on 16-frame clips: at --fps 1 (120 frames of that clip) its answer is wrong
("left"), a length it never saw; the features are still exactly those of the one-shot path.
"""

import argparse
import os
import tempfile

import numpy as np

from storm_hf.inference import load, video_question_prompt
from storm_hf.miniature.temporal_qa import write_video

parser = argparse.ArgumentParser()
parser.add_argument("video", nargs="?")
parser.add_argument("--num-frames", type=int, help="frames sampled evenly (default 16, as the bundled model was "
                    "trained; a model trained on long videos takes --fps 1)")
parser.add_argument("--fps", type=float, help="frames sampled a second, instead of --num-frames")
parser.add_argument("--chunk-frames", type=int, default=64)
args = parser.parse_args()

model, processor = load()  # the bundled model
with tempfile.TemporaryDirectory() as folder:
    video = args.video
    if video is None:  # 2 minutes at 8 fps: a red square crossing the frame from left to right
        frames = np.zeros((960, 48, 48, 3), np.uint8)
        for t in range(960):
            x = t * 36 // 960
            frames[t, 18:30, x:x + 12] = (220, 40, 40)
        video = write_video(os.path.join(folder, "long.mp4"), frames, options={})
    sampling = {"fps": args.fps} if args.fps else {"num_frames": args.num_frames or 16}
    chunks = processor.video_chunks(video, chunk_frames=args.chunk_frames, **sampling)
    features = model.encode_video(chunks)  # a progress bar on a terminal
    question = "which way does the square move ?"
    inputs = processor(text=video_question_prompt(processor, question), video_num_frames=features.video_num_frames,
                       return_tensors="pt")
    out = model.generate(**inputs, mm_encoder_outputs={"video": features}, max_new_tokens=4, do_sample=False)
answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
print(f"{chunks.num_frames} frames -> {features.pooler_output[0].shape[0]} visual tokens; {question} -> {answer}")
if args.video is None:
    print("expected: right")
