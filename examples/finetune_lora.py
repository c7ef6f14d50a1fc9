"""LoRA fine-tuning of STORM on video QA data, with transformers' Trainer (copy into a notebook).

    python examples/finetune_lora.py [--model CHECKPOINT] [--data data/train.jsonl --video-root data]

The script's path is from the repository root (examples/ is not installed with the package); it writes under
./outputs/ of the folder it runs in. Without arguments it builds a tiny random-weight STORM and a small dataset of generated clips (a square
moving left or right) in the documented JSONL format under ./outputs/, so it runs offline in seconds. The
job it runs is also written to outputs/job.yaml, for `storm-hf train outputs/job.yaml`.
"""

import argparse
import json
import os

import torch
import yaml

from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor
from storm_hf.miniature.tiny import word_tokenizer, write_clip
from storm_hf.training import train


def make_example_data(root: str, count: int = 8) -> str:
    """Clips of a square moving left or right, and one question/answer record per clip."""
    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    records = []
    for i in range(count):
        direction = "right" if i % 2 == 0 else "left"
        path = os.path.join("clips", f"{i:03d}.mp4")
        write_clip(os.path.join(root, path), num_frames=24, size=64, fps=12, direction=direction)
        records.append({"video": path, "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "where does the square move ?"}]},
            {"role": "assistant", "content": f"the square moves {direction}"}]})
    with open(os.path.join(root, "train.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in records))
    return os.path.join(root, "train.jsonl")


def make_tiny_checkpoint(folder: str) -> str:
    """A random-weight tiny STORM with a word-level tokenizer (stands in for a real checkpoint)."""
    tokenizer = word_tokenizer("where does the square move moves left right ?".split())  # the tiny preset's ids
    config = StormConfig.from_preset("tiny")
    torch.manual_seed(0)
    StormForConditionalGeneration(config).save_pretrained(folder)
    StormProcessor.from_config(config, tokenizer=tokenizer).save_pretrained(folder)
    return folder


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="a STORM checkpoint folder or Hub id (default: a tiny random-weight one)")
parser.add_argument("--data", help="training records, JSON / JSONL (default: generated clips under outputs/)")
parser.add_argument("--video-root", help="folder the records' video paths are relative to (default: --data's)")
parser.add_argument("--output-dir", default="outputs/storm-lora", help="where the adapter and merged model go")
parser.add_argument("--max-steps", type=int, default=20, help="optimizer steps (default 20)")
args = parser.parse_args()
if args.max_steps < 1:
    parser.error(f"--max-steps must be at least 1, got {args.max_steps}")

model_path = args.model or make_tiny_checkpoint("outputs/storm-tiny-base")
data = args.data or make_example_data("outputs/example-data")
job = {
    "model": model_path,
    "train_file": data,
    "video_root": args.video_root or os.path.dirname(data),
    "num_frames": 8,
    "stage": "lora",
    "lora": {"rank": 8, "alpha": 16},
    "merge_lora": True,
    "training": {"output_dir": args.output_dir, "max_steps": args.max_steps, "per_device_train_batch_size": 4,
                 "learning_rate": 5e-3, "logging_steps": max(1, min(5, args.max_steps)),  # a short run logs too
                 "save_steps": 10, "bf16": "auto", "activation_checkpointing": True},
}
os.makedirs("outputs", exist_ok=True)
with open("outputs/job.yaml", "w") as f:  # the same job as a file: `storm-hf train outputs/job.yaml`
    yaml.safe_dump(job, f, sort_keys=False)
run = train(job)
if run.finished_before:
    print(f"nothing trained: {args.output_dir} already holds a finished run (delete it or pass --output-dir)")
else:
    losses = (f"loss {run.losses[0][1]:.3f} -> {run.losses[-1][1]:.3f}" if run.losses
              else "no loss logged")  # e.g. a resumed run whose remaining steps fell between two logs
    print(f"{losses} over steps {run.start_step}-{run.end_step}; adapter in {args.output_dir}, merged model in "
          f"{args.output_dir}/merged")
