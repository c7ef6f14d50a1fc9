"""Ask a (tiny, random-weight) STORM model about a video file: processor -> generate -> decode.

    python examples/video_question.py [path/to/video.mp4]

Without a path it writes a short generated clip first. With a trained checkpoint, replace the tiny
model and tokenizer with `from_pretrained(...)`; the rest stays the same.
"""

import sys
import tempfile

import av
import numpy as np
import torch
from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor
from storm_hf.tiny import word_tokenizer


def write_clip(path, frames=48):
    """A square crossing a 64x64 frame, H.264."""
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for t in range(frames):
            image = np.zeros((64, 64, 3), np.uint8)
            image[24:40, t : t + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


if len(sys.argv) > 1:
    video = sys.argv[1]
else:
    video = f"{tempfile.mkdtemp()}/square.mp4"
    write_clip(video)

tokenizer = word_tokenizer("what happens in the video ? a square moves".split())  # the tiny preset's ids
config = StormConfig.from_preset("tiny")
processor = StormProcessor.from_config(config, tokenizer=tokenizer)
torch.manual_seed(0)
model = StormForConditionalGeneration(config).eval()

conversation = [{"role": "user", "content": [{"type": "video", "path": video},
                                             {"type": "text", "text": "what happens in the video ?"}]}]
inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt", processor_kwargs={"num_frames": 16,
                                                                               "return_metadata": True})
metadata = inputs.pop("video_metadata")[0]
print(f"frames {metadata.frames_indices} at {np.round(metadata.timestamps, 2).tolist()} s")
print(f"{inputs['video_num_frames'].item()} frames -> {config.num_visual_tokens(16)} visual tokens")
output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
print("answer (random weights):", processor.decode(output[0, inputs["input_ids"].shape[1]:]))
