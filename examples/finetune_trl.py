"""Fine-tuning STORM on video QA with TRL's SFTTrainer (copy into a notebook).

    pip install trl     # TRL is not a dependency of storm_hf: `pip install "storm_hf[trl]"`, or ".[dev]" in a checkout
    python examples/finetune_trl.py [--model CHECKPOINT] [--data train.jsonl --video-root DIR] [--stage lora]

TRL's SFTTrainer recognises image datasets ("image" / "images" columns) but not videos: with a video in the
messages and no collator of its own, it renders and tokenizes the text alone and the video never reaches the
model. The recipe: storm_hf's StormDataCollator as `data_collator` (it renders the chat template, decodes and
samples each record's video through the processor per batch, expands the placeholders and labels only the
answers), and the two settings that hand it the records untouched: `remove_unused_columns=False` and
`dataset_kwargs={"skip_prepare_dataset": True}`. Records are storm_hf's training format, one video per record:

    {"video": "clips/0001.mp4",   # relative to --video-root
     "messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}]}

Without arguments it builds a tiny random-weight STORM and clips of a square moving left or right under
./outputs/ (of the folder it runs in), so it runs offline in seconds.
"""

import argparse
import json
import os

import torch
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer

from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor
from storm_hf.miniature.tiny import word_tokenizer, write_clip
from storm_hf.training import StormDataCollator, apply_training_stage

QUESTION = "where does the square move ?"


def make_example_data(root: str, count: int = 8) -> str:
    """Clips of a square moving left or right and one record per clip, as JSONL. Every "content" is a list of
    items: a `datasets` column holds one type (a plain-string content next to a list would not load)."""
    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    with open(os.path.join(root, "train.jsonl"), "w") as f:
        for i in range(count):
            direction = "right" if i % 2 == 0 else "left"
            path = os.path.join("clips", f"{i:03d}.mp4")
            write_clip(os.path.join(root, path), num_frames=16, size=32, fps=8, direction=direction)
            f.write(json.dumps({"video": path, "messages": [
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"the square moves {direction}"}]}]}) + "\n")
    return os.path.join(root, "train.jsonl")


def make_tiny_checkpoint(folder: str) -> str:
    """A random-weight tiny STORM with a word-level tokenizer (stands in for a real checkpoint)."""
    config = StormConfig.from_preset("tiny")
    torch.manual_seed(0)
    StormForConditionalGeneration(config).save_pretrained(folder)
    tokenizer = word_tokenizer("where does the square move moves left right ?".split())  # the tiny preset's ids
    StormProcessor.from_config(config, tokenizer=tokenizer).save_pretrained(folder)
    return folder


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="a STORM checkpoint folder or Hub id (default: a tiny random-weight one)")
parser.add_argument("--data", help="training records, JSONL (default: generated clips under outputs/)")
parser.add_argument("--video-root", help="folder the records' video paths are relative to (default: --data's)")
parser.add_argument("--output-dir", default="outputs/storm-trl", help="where the trained model goes")
parser.add_argument("--stage", default="sft", choices=("alignment", "sft", "lora"), help="what trains (default sft)")
parser.add_argument("--num-frames", type=int, default=8, help="frames sampled per video (default 8)")
parser.add_argument("--max-steps", type=int, default=10, help="optimizer steps (default 10)")
args = parser.parse_args()
if args.max_steps < 1:
    parser.error(f"--max-steps must be at least 1, got {args.max_steps}")

model_path = args.model or make_tiny_checkpoint("outputs/storm-tiny-base")
data = args.data or make_example_data("outputs/example-data-trl")
model = apply_training_stage(StormForConditionalGeneration.from_pretrained(model_path), args.stage)
processor = StormProcessor.from_pretrained(model_path)
dataset = load_dataset("json", data_files=data, split="train")  # or storm_hf.training.load_video_dataset(data)

trainer = SFTTrainer(
    model=model,
    processing_class=processor,
    train_dataset=dataset,
    # The videos go in here: decoded per batch through the processor, placeholders expanded, answers labelled.
    data_collator=StormDataCollator(processor, video_root=args.video_root or os.path.dirname(data),
                                    num_frames=args.num_frames),
    args=SFTConfig(
        output_dir=args.output_dir,
        remove_unused_columns=False,  # keep "video" and "messages" for the collator
        dataset_kwargs={"skip_prepare_dataset": True},  # no text-only tokenization by TRL
        max_steps=args.max_steps, per_device_train_batch_size=4, learning_rate=5e-3,
        logging_steps=max(1, min(5, args.max_steps)), save_strategy="no", report_to="none",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # TRL's default, bf16=True, needs a GPU
    ),
)
batch = next(iter(trainer.get_train_dataloader()))
print("batch:", ", ".join(f"{key} {tuple(value.shape)}" for key, value in batch.items()))
trainer.train()
losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
print(f"stage {args.stage}: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {trainer.state.global_step} steps")

if args.stage == "lora":
    model = model.merge_and_unload()  # a plain STORM again, with the adapter folded in
model.save_pretrained(args.output_dir)
processor.save_pretrained(args.output_dir)
model = StormForConditionalGeneration.from_pretrained(args.output_dir).eval()
record = dataset[0]
messages = [record["messages"][0]]
messages[0]["content"][0]["path"] = os.path.join(args.video_root or os.path.dirname(data), record["video"])
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=4)
answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
print(f"saved to {args.output_dir}; asked {record['video']}: {answer!r}")
