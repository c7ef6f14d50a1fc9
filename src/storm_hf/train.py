# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""`storm-hf train CONFIG`: fine-tune STORM with transformers' Trainer, on one CPU or under `accelerate launch`.

CONFIG is a JSON or YAML file::

    model: path/or/hub-id            # a STORM checkpoint (with its processor files)
    processor: path/or/hub-id        # optional, defaults to `model`
    train_file: data/train.jsonl     # see storm_hf.training for the format
    video_root: data                 # video paths in the records are relative to this
    num_frames: 32
    stage: lora                      # alignment | sft | lora
    freeze: [vision_tower]           # optional: parts kept fixed on top of the stage (vision_tower, projector,
                                     # temporal_encoder, language_model, lm_head)
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

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field

import torch
from transformers import Trainer


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


@dataclass
class TrainingRun:
    """What one `train` call did.

    trainer: the `transformers.Trainer` (None when nothing was trained); output_dir: where the outputs are;
    outputs: {what: path} of what is there (model or adapter, processor, checkpoints, merged model);
    resumed_from: the checkpoint the run continued from, if any; start_step and end_step: the optimizer
    steps this call began and ended at; losses: [(step, loss)] logged by *this* call only;
    finished_before: True when output_dir already held a finished run and nothing was trained.
    """

    output_dir: str
    trainer: object = None
    start_step: int = 0
    end_step: int = 0
    resumed_from: str | None = None
    finished_before: bool = False
    losses: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)


def no_weight_decay_parameter_names(model) -> set[str]:
    """Names of the SSM parameters that take no weight decay (mamba_ssm's `_no_weight_decay`): every mixer's
    `A_log` and `D`, found by module type so that a reload or a PEFT wrapper cannot lose the mark."""
    from .modeling_storm import StormMambaMixer

    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, StormMambaMixer):
            names.update(f"{module_name}.{name}" if module_name else name for name in ("A_log", "D"))
    return names


class StormTrainer(Trainer):
    """transformers' Trainer whose weight decay skips, besides norms and biases (Trainer's own rule), the
    SSM's `A_log` and `D`, as mamba_ssm trains them. `storm-hf train` uses it; so can your own scripts."""

    def get_decay_parameter_names(self, model) -> list[str]:
        skip = no_weight_decay_parameter_names(model)
        return [name for name in super().get_decay_parameter_names(model) if name not in skip]


def _require_training_packages():
    missing = [name for name in ("accelerate", "peft") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"storm-hf train needs {' and '.join(missing)}, which storm_hf installs by default; this environment "
            f"lacks it. Reinstall with `pip install -e .` (or `pip install {' '.join(missing)}`)."
        )


def _checkpoint_state(checkpoint: str) -> dict:
    path = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _final_weights_present(output_dir: str) -> bool:
    names = set(os.listdir(output_dir)) if os.path.isdir(output_dir) else set()
    return bool(names & {"model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"})


def _outputs(output_dir: str, stage: str, merged: bool) -> dict:
    outputs = {}
    if os.path.isdir(output_dir):
        names = sorted(os.listdir(output_dir))
        if stage == "lora" and "adapter_model.safetensors" in names:
            outputs["adapter"] = output_dir
        elif _final_weights_present(output_dir):
            outputs["model"] = output_dir
        if "processor_config.json" in names:
            outputs["processor"] = output_dir
        checkpoints = sorted((n for n in names if re.fullmatch(r"checkpoint-\d+", n)), key=lambda n: int(n[11:]))
        if checkpoints:
            outputs["checkpoints"] = [os.path.join(output_dir, n) for n in checkpoints]
        if merged and os.path.isdir(os.path.join(output_dir, "merged")):
            outputs["merged model"] = os.path.join(output_dir, "merged")
    return outputs


def _describe_outputs(outputs: dict) -> str:
    parts = []
    for what, where in outputs.items():
        if what == "checkpoints":
            parts.append(f"{len(where)} checkpoint(s) ({', '.join(os.path.basename(p) for p in where)})")
        else:
            parts.append(f"{what} in {where}")
    return "; ".join(parts) or "nothing yet"


def train(config: dict, callbacks=None):
    """Run one training job described by `config` (see the module docstring).

    Returns a `TrainingRun`: the Trainer, what this call trained, the losses it logged and where the outputs
    are. With ``resume: auto`` (the default) a job whose output_dir holds an unfinished run resumes from its
    last checkpoint; one whose output_dir already holds a finished run (its last checkpoint at max_steps and
    the final weights saved) loads nothing, trains nothing and says so.
    """
    _require_training_packages()
    from transformers import TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from .modeling_storm import StormForConditionalGeneration
    from .processing_storm import StormProcessor
    from .training import (StormDataCollator, apply_training_stage, freeze_parts, load_video_dataset,
                           trainable_parameters)

    training = dict(config.get("training", {}))
    if "output_dir" not in training:
        raise ValueError("The training config needs training.output_dir.")
    if training.get("bf16") == "auto":
        training["bf16"] = bf16_supported()
    training.setdefault("remove_unused_columns", False)  # the collator needs the raw records
    training.setdefault("report_to", [])
    args = TrainingArguments(**training)
    stage = config.get("stage", "lora")
    merge = stage == "lora" and bool(config.get("merge_lora"))
    main_process = args.process_index == 0
    say = print if main_process else (lambda *a, **k: None)
    run = TrainingRun(output_dir=os.path.abspath(args.output_dir))

    resume = config.get("resume", "auto")
    if resume == "auto":
        resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    if resume:
        state = _checkpoint_state(resume)
        step, planned = int(state.get("global_step", 0)), int(state.get("max_steps", 0))
        target = args.max_steps if args.max_steps > 0 else planned
        run.start_step = run.end_step = step
        if target and step >= target and _final_weights_present(args.output_dir) and (not merge or os.path.isdir(
                os.path.join(args.output_dir, "merged"))):
            run.finished_before = True
            run.outputs = _outputs(args.output_dir, stage, merge)
            say(f"{args.output_dir} already holds a finished run at step {step} (max_steps {target}); nothing to "
                f"do. Outputs: {_describe_outputs(run.outputs)}. To train again, use a new output_dir (or resume: "
                "false, which trains from the start and overwrites its checkpoints and final weights).")
            return run
        say(f"resuming from {resume} (step {step} of {target or '?'})")
        run.resumed_from = resume
    else:
        say(f"training from the start into {args.output_dir}")

    set_seed(args.seed)  # new weights (LoRA adapters, a fresh projector) start the same in every run
    model = StormForConditionalGeneration.from_pretrained(config["model"])
    processor = StormProcessor.from_pretrained(config.get("processor", config["model"]))
    lora = config.get("lora", {})
    model = apply_training_stage(model, stage, lora_rank=lora.get("rank", 16),
                                 lora_alpha=lora.get("alpha", 32), lora_dropout=lora.get("dropout", 0.05))
    freeze_parts(model, config.get("freeze") or [])
    if args.gradient_checkpointing and stage == "lora":
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    if main_process:
        counts = trainable_parameters(model)
        print(f"stage {stage}: {counts['trainable']:,} of {counts['total']:,} parameters train")
        for key, value in sorted(counts.items()):
            if key.endswith("trainable") and key != "trainable":
                print(f"  {key[:-len(' trainable')]:18s} {value:>14,} / {counts[key[:-len('trainable')] + 'total']:,}")

    dataset = load_video_dataset(config["train_file"])
    collator = StormDataCollator(processor, video_root=config.get("video_root", "."),
                                 num_frames=config.get("num_frames"))
    trainer = run.trainer = StormTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                         callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume or None)
    run.end_step = trainer.state.global_step
    run.losses = [(log["step"], log["loss"]) for log in trainer.state.log_history
                  if "loss" in log and log.get("step", 0) > run.start_step]
    if trainer.state.global_step < args.max_steps and trainer.control.should_training_stop:
        run.outputs = _outputs(args.output_dir, stage, merge)
        say(f"stopped at step {run.end_step} of {args.max_steps}; resume with the same command. "
            f"Outputs: {_describe_outputs(run.outputs)}.")
        return run  # stopped early (e.g. by a callback): leave the checkpoints for a resume
    trainer.save_model(args.output_dir)
    if main_process:
        processor.save_pretrained(args.output_dir)
        if merge:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(os.path.join(args.output_dir, "merged"))
            processor.save_pretrained(os.path.join(args.output_dir, "merged"))
    run.outputs = _outputs(args.output_dir, stage, merge)
    if run.losses:
        loss_text = f"loss {run.losses[0][1]:.4f} (step {run.losses[0][0]}) -> {run.losses[-1][1]:.4f} (step {run.losses[-1][0]})"
    else:
        loss_text = "no loss logged in this run"
    say(f"trained steps {run.start_step} -> {run.end_step}: {loss_text}. Outputs: {_describe_outputs(run.outputs)}.")
    return run


def main(argv=None):
    """`storm-hf` (see `storm_hf.cli`); kept here so that `python -m storm_hf.train CONFIG` and
    `accelerate launch -m storm_hf.train CONFIG` work."""
    from .cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(["train", *sys.argv[1:]] if len(sys.argv) > 1 and sys.argv[1] != "train" else None))
