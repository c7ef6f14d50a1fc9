# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""`storm-hf train CONFIG`: fine-tune STORM with transformers' Trainer, on one CPU or under `accelerate launch`.

CONFIG is a JSON or YAML file::

    model: path/or/hub-id            # a STORM checkpoint (with its processor files)
    processor: path/or/hub-id        # optional, defaults to `model`
    train_file: data/train.jsonl     # see storm_hf.training for the format
    video_root: data                 # video paths in the records are relative to this
    num_frames: 32
    stage: lora                      # alignment | sft | lora
    lora: {rank: 16, alpha: 32, dropout: 0.05}
    merge_lora: false                # also write a merged full checkpoint to OUTPUT_DIR/merged
    resume: auto                     # auto (last checkpoint in output_dir, if any) | a path | false
    training:                        # transformers.TrainingArguments fields
      output_dir: runs/storm-lora
      max_steps: 1000
      per_device_train_batch_size: 1
      learning_rate: 2.0e-4
      save_steps: 200
      gradient_checkpointing: true
      bf16: auto                     # auto: on where the hardware supports bf16

Under `accelerate launch --num_processes N -m storm_hf.train CONFIG` the same command runs data-parallel
(DDP); DeepSpeed ZeRO and FSDP are accelerate configurations (see the README).
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def load_config(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return False  # CPU bf16 autocast exists but is slower than fp32 on most CPUs


def train(config: dict, callbacks=None):
    """Run one training job described by `config` (see the module docstring). Returns the Trainer."""
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from .modeling_storm import StormForConditionalGeneration
    from .processing_storm import StormProcessor
    from .training import StormDataCollator, apply_training_stage, load_video_dataset, trainable_parameters

    training = dict(config.get("training", {}))
    if "output_dir" not in training:
        raise ValueError("The training config needs training.output_dir.")
    if training.get("bf16") == "auto":
        training["bf16"] = bf16_supported()
    training.setdefault("remove_unused_columns", False)  # the collator needs the raw records
    training.setdefault("report_to", [])
    args = TrainingArguments(**training)
    set_seed(args.seed)  # new weights (LoRA adapters, a fresh projector) start the same in every run

    model = StormForConditionalGeneration.from_pretrained(config["model"])
    processor = StormProcessor.from_pretrained(config.get("processor", config["model"]))
    lora = config.get("lora", {})
    model = apply_training_stage(model, config.get("stage", "lora"), lora_rank=lora.get("rank", 16),
                                 lora_alpha=lora.get("alpha", 32), lora_dropout=lora.get("dropout", 0.05))
    if args.gradient_checkpointing and config.get("stage", "lora") == "lora":
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    if args.process_index == 0:
        counts = trainable_parameters(model)
        print(f"stage {config.get('stage', 'lora')}: {counts['trainable']:,} of {counts['total']:,} parameters train")
        for key, value in sorted(counts.items()):
            if key.endswith("trainable") and key != "trainable":
                print(f"  {key[:-len(' trainable')]:18s} {value:>14,} / {counts[key[:-len('trainable')] + 'total']:,}")

    dataset = load_video_dataset(config["train_file"])
    collator = StormDataCollator(processor, video_root=config.get("video_root", "."),
                                 num_frames=config.get("num_frames"))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=callbacks)

    resume = config.get("resume", "auto")
    if resume == "auto":
        resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    trainer.train(resume_from_checkpoint=resume or None)
    if trainer.state.global_step < args.max_steps and trainer.control.should_training_stop:
        return trainer  # stopped early (e.g. by a callback): leave the checkpoints for a resume
    trainer.save_model(args.output_dir)
    if args.process_index == 0:
        processor.save_pretrained(args.output_dir)
        if config.get("stage", "lora") == "lora" and config.get("merge_lora"):
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(os.path.join(args.output_dir, "merged"))
            processor.save_pretrained(os.path.join(args.output_dir, "merged"))
    return trainer


def main(argv=None):
    parser = argparse.ArgumentParser(prog="storm-hf", description="STORM tools")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="fine-tune with a JSON/YAML config (see storm_hf.train)")
    train_parser.add_argument("config")
    args = parser.parse_args(argv)
    if args.command == "train":
        train(load_config(args.config))


if __name__ == "__main__":
    import sys

    main(["train", *sys.argv[1:]] if len(sys.argv) > 1 and sys.argv[1] != "train" else None)
