# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""What `storm-hf train` needs to resume exactly and to survive a kill (used by storm_hf.training.job).

* The plan record: every checkpoint gets `storm_train_plan.json`, the settings that shape the trained weights
  (max_steps, epochs, batch size, accumulation, world size, learning rate and schedule, seed, num_frames,
  stage), so that a resume can say what changed instead of silently training something else.
* Complete checkpoints: transformers' Trainer (5.x) writes `checkpoint-N` in place, file after file, and
  `trainer_state.json` last; `get_last_checkpoint` takes the highest-numbered folder, complete or not.
  `checkpoint_problem` says why a folder is not a whole checkpoint (no or cut-off trainer_state.json, a
  step that does not match the name, cut-off safetensors, optimizer/scheduler/RNG archives missing or cut
  off); `last_complete_checkpoint` skips and reports such folders (it never deletes them).
* The schedule check: the learning rates a checkpoint already used under its planned length, against
  those a straight run of the new length would use, built with transformers' own `get_scheduler`.
* Finished runs: the final weights are written beside the output folder's files and moved in by rename,
  and `storm_train_finished.json` is written last; without it (a kill during the final save) the run is
  not finished and resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile

import torch

PLAN_NAME = "storm_train_plan.json"
FINISHED_NAME = "storm_train_finished.json"
STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME
_FINAL_STAGING = ".storm_final_saving"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_WEIGHTS = re.compile(r"^(model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json"
                      r"|adapter_model\.safetensors)$")
_MODEL_WEIGHTS = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")  # replaced as a set

# Settings that change the trained weights when they differ between the run that wrote a checkpoint and the
# run that resumes from it (besides the schedule's length, which `changed_rate_step` compares). Trainer
# restores the checkpoint's optimizer and scheduler, so a new learning_rate or weight_decay would not even
# apply; batch size, accumulation, world size and seeds change which examples each step sees.
COMPARED_SETTINGS = ("stage", "num_frames", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "world_size", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
                     "weight_decay", "optim", "max_grad_norm", "seed", "data_seed", "part_learning_rates")


def _plain(value):
    return getattr(value, "value", value)  # the enums of TrainingArguments (SchedulerType, OptimizerNames)


def training_plan(args, **extra) -> dict:
    """The plan record of a run: its TrainingArguments' length and the settings in COMPARED_SETTINGS, plus
    `extra` (train() adds stage and num_frames)."""
    plan = {"max_steps": args.max_steps, "num_train_epochs": args.num_train_epochs,
            "save_only_model": args.save_only_model}
    for name in COMPARED_SETTINGS:
        if hasattr(args, name):
            plan[name] = _plain(getattr(args, name))
    plan.update(extra)
    return json.loads(json.dumps(plan, default=str))  # as it reads back from the file


def read_json(path: str):
    """The JSON in `path`, or None when it is missing or not valid JSON (e.g. cut off by a kill)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_plan(checkpoint: str) -> dict | None:
    plan = read_json(os.path.join(checkpoint, PLAN_NAME))
    return plan if isinstance(plan, dict) else None


def _fsync(path: str, directory: bool = False):
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return  # e.g. folders cannot be opened on Windows
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_folder(folder: str):
    """fsync every file under `folder`, its folders and its parent: once this returns, what was written
    survives a power cut, not only a killed process."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root, directory=True)
    _fsync(os.path.dirname(os.path.abspath(folder)), directory=True)


def write_json_atomically(path: str, data: dict):
    """Write `path` whole or not at all: into a temporary file, fsynced, then renamed over `path`."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _fsync(os.path.dirname(os.path.abspath(path)), directory=True)


def _remove(path: str):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def invalidate_checkpoint(folder: str):
    """Before a checkpoint is written over an existing `checkpoint-N` folder (left half-written by a killed
    run, or written by an earlier pass over the same steps): remove its trainer_state.json and plan record,
    which the save rewrites last, so that the folder reads as incomplete until the new save has finished."""
    for name in (STATE_NAME, PLAN_NAME):
        _remove(os.path.join(folder, name))


# ---- Is a checkpoint folder whole? ----

def _safetensors_problem(path: str) -> str | None:
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 0 or length > size - 8:
                return f"{name} is cut off ({size} bytes)"
            header = json.loads(f.read(length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return f"{name} has no readable safetensors header"
    if size != 8 + length + end:
        return f"{name} is cut off ({size} of {8 + length + end} bytes)"
    return None


def _archive_problem(path: str) -> str | None:
    """torch.save writes a zip archive whose directory comes last: a cut-off file has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return f"{os.path.basename(path)} is cut off"
    return None


def checkpoint_problem(folder: str, model_only: bool = False) -> str | None:
    """Why `folder` is not a whole checkpoint to resume from, or None when it is.

    Checked without unpickling anything: trainer_state.json (Trainer's last write) is valid JSON with the
    global_step of the folder's name; the weights (model.safetensors, its shards and index, or
    adapter_model.safetensors) have whole safetensors headers and the length they announce; optimizer.pt,
    scheduler.pt, scaler.pt and the RNG states (one per process of the run, where the plan record says how
    many) are whole zip archives. `model_only` (save_only_model) skips the optimizer, scheduler and RNG.
    DeepSpeed and FSDP folders (their own layouts) are checked for trainer_state.json only.
    """
    if not os.path.isdir(folder):
        return "not a folder"
    files = set(os.listdir(folder))
    if STATE_NAME not in files:
        return f"no {STATE_NAME}"
    state = read_json(os.path.join(folder, STATE_NAME))
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{STATE_NAME} is cut off or not a trainer state"
    match = _CHECKPOINT.fullmatch(os.path.basename(os.path.normpath(folder)))
    if match and state["global_step"] != int(match[1]):
        return f"{STATE_NAME} is for step {state['global_step']}"
    if any(name.startswith(("global_step", "pytorch_model_fsdp", "optimizer_0")) for name in files):
        return None  # DeepSpeed / FSDP layouts: trainer_state.json, written after them, is the test
    plan = read_plan(folder) or {}
    if "model.safetensors.index.json" in files:
        index = read_json(os.path.join(folder, "model.safetensors.index.json"))
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            return "model.safetensors.index.json is cut off"
        weights = sorted(set(index["weight_map"].values()))
    else:
        weights = [name for name in ("model.safetensors", "adapter_model.safetensors") if name in files]
    if not weights:
        return "no model weights"
    problem = _first_problem(folder, files, weights, _safetensors_problem)
    if problem or model_only or plan.get("save_only_model"):
        return problem
    world_size = plan.get("world_size") or 1
    rng = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{i}.pth" for i in range(world_size)]
    if world_size <= 1 and "rng_state.pth" not in files:
        rng = sorted(name for name in files if re.fullmatch(r"rng_state_\d+\.pth", name)) or rng
    archives = ["optimizer.pt", "scheduler.pt", *rng, *(["scaler.pt"] if "scaler.pt" in files else [])]
    return _first_problem(folder, files, archives, _archive_problem)


def _first_problem(folder, files, names, check) -> str | None:
    """The first of ``names`` missing from ``files`` or whose file ``check`` finds wrong, said in words; or None."""
    for name in names:
        if name not in files:
            return f"no {name}"
        problem = check(os.path.join(folder, name))
        if problem:
            return problem
    return None


def checkpoint_folders(output_dir: str) -> list[str]:
    """The `checkpoint-N` folders of `output_dir`, highest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m[1]), name) for name in os.listdir(output_dir)
             if (m := _CHECKPOINT.fullmatch(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str, say=print, model_only: bool = False) -> str | None:
    """The highest-numbered whole checkpoint in `output_dir` (None if there is none). Incomplete folders
    above it are reported through `say` and left as they are."""
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder, model_only=model_only)
        if problem is None:
            return folder
        say(f"skipping {folder}: incomplete ({problem}: its save was cut short); left as it is")
    return None


# ---- What a resume would change ----

def changed_settings(plan: dict | None, state: dict, current: dict, train_batch_size: int) -> list[str]:
    """`name old -> new` for each setting the checkpoint's plan record (or, without one, its
    trainer_state.json: train_batch_size) holds with another value than this run."""
    if plan:
        return [f"{name} {plan[name]} -> {current[name]}" for name in COMPARED_SETTINGS
                if name in plan and name in current and plan[name] != current[name]]
    old = state.get("train_batch_size")
    return [f"train_batch_size {old} -> {train_batch_size}"] if old and old != train_batch_size else []


def learning_rates(args, total_steps: int, count: int) -> list[float] | None:
    """The learning rates of optimizer steps 0..count-1 under `args`' schedule (lr_scheduler_type, warmup,
    lr_scheduler_kwargs) planned for `total_steps`, from transformers' `get_scheduler` on a throwaway
    optimizer; None for a schedule that follows metrics rather than steps (reduce_lr_on_plateau)."""
    from transformers.optimization import get_scheduler

    if _plain(args.lr_scheduler_type) == "reduce_lr_on_plateau":
        return None
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                              num_warmup_steps=args.get_warmup_steps(total_steps), num_training_steps=total_steps,
                              scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # what LambdaLR.get_lr computes, without stepping
        base, rule = scheduler.base_lrs[0], scheduler.lr_lambdas[0]
        return [base * rule(step) for step in range(count)]
    rates = []
    for _ in range(count):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def changed_rate_step(args, old_total: int, new_total: int, resumed_step: int) -> int | None:
    """The first optimizer step (1-based) whose learning rate a run resumed at `resumed_step` from a run
    planned for `old_total` steps took from the old plan but a straight `new_total`-step run takes
    differently; None when the two plans agree on all of them (same length, a constant schedule, or a
    warmup that ends before the steps the old plan decays over).

    Steps 1..resumed_step ran under the old plan, and so does step resumed_step + 1: the checkpoint's
    optimizer holds the rate the old scheduler set for it, which Trainer restores.
    """
    if old_total == new_total or not old_total or not new_total:
        return None
    old = learning_rates(args, old_total, resumed_step + 1)
    new = learning_rates(args, new_total, resumed_step + 1)
    if old is None or new is None:
        return None
    return next((step + 1 for step, (a, b) in enumerate(zip(old, new)) if a != b), None)


def describe_plan(plan: dict | None, total: int) -> str:
    if plan and plan.get("max_steps", -1) <= 0 and plan.get("num_train_epochs") is not None:
        return f"num_train_epochs {plan['num_train_epochs']:g}, {total} steps"
    return f"max_steps {total}"


# ---- Finished runs ----

def finished_record(output_dir: str) -> dict | None:
    """The record of the finished run in `output_dir` (written after its final weights), or None: none
    written, cut off, or a weight file it lists missing or of another size."""
    record = read_json(os.path.join(output_dir, FINISHED_NAME))
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or not record["files"]:
        return None
    for name, size in record["files"].items():
        path = os.path.join(output_dir, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return None
    return record


def clear_finished(output_dir: str):
    """A run starts training into `output_dir`: what is there is no longer its finished result."""
    _remove(os.path.join(output_dir, FINISHED_NAME))


def _move(source: str, target: str):
    if os.path.isdir(source) and os.path.isdir(target):  # a folder written over (e.g. DeepSpeed's)
        old = target + ".storm-old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def save_final_outputs(trainer, output_dir: str, processor, merge: bool, main_process: bool, record: dict):
    """The final save of `storm-hf train` into `output_dir`, which holds the checkpoints (and maybe files of
    the user's): the model (or adapter) and processor are written to a fresh hidden folder inside it,
    fsynced and moved in file by file with os.replace (weights files of an earlier final save that this one
    does not write go; a README.md already there is kept; output_dir itself is never moved), the merged
    model is saved into `merged`, and `storm_train_finished.json` (`record` plus the weight files and their
    sizes) is written last. A kill anywhere before that leaves a run that is not finished: the next
    `storm-hf train` resumes from its last checkpoint and saves again."""
    staging = os.path.join(output_dir, _FINAL_STAGING)
    if main_process:
        clear_finished(output_dir)
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed final save
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(staging)  # every process: DeepSpeed and FSDP gather the weights
    if not main_process:
        return
    processor.save_pretrained(staging)
    sync_folder(staging)
    written = set(os.listdir(staging))
    for name in os.listdir(output_dir):
        if _MODEL_WEIGHTS.match(name) and name not in written and written & {"model.safetensors",
                                                                             "model.safetensors.index.json"}:
            _remove(os.path.join(output_dir, name))
    for name in sorted(written):
        if name == "README.md" and os.path.exists(os.path.join(output_dir, name)):
            continue
        _move(os.path.join(staging, name), os.path.join(output_dir, name))
    shutil.rmtree(staging, ignore_errors=True)
    if merge:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(os.path.join(output_dir, "merged"))
        processor.save_pretrained(os.path.join(output_dir, "merged"))
        sync_folder(os.path.join(output_dir, "merged"))
    _fsync(output_dir, directory=True)
    files = {name: os.path.getsize(os.path.join(output_dir, name)) for name in sorted(written) if _WEIGHTS.match(name)}
    write_json_atomically(os.path.join(output_dir, FINISHED_NAME), {**record, "merged": merge, "files": files})
