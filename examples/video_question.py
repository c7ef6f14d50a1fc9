"""Ask a (tiny, random-weight) STORM model about a video file: processor -> generate -> decode.

    python examples/video_question.py [path/to/video.mp4]

Without a path it writes a short generated clip first. With a trained checkpoint, replace the tiny
model and tokenizer with `from_pretrained(...)`; the rest stays the same.
"""

import sys
import tempfile

import numpy as np
import torch

from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor
from storm_hf.miniature.tiny import word_tokenizer, write_clip

if len(sys.argv) > 1:
    video = sys.argv[1]
else:
    video = write_clip(f"{tempfile.mkdtemp()}/square.mp4")

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
