# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""`storm-hf train CONFIG`: fine-tune STORM with transformers' Trainer, on one CPU or under `accelerate launch`.

CONFIG is a JSON or YAML file (the keys marked * are required; any other top-level key is refused)::

    model: path/or/hub-id            # * a STORM checkpoint (with its processor files) to start from
    processor: path/or/hub-id        # optional, defaults to `model`
    train_file: data/train.jsonl     # * JSON / JSONL records: {"video": ..., "messages": [...]} (storm_hf.training)
    video_root: data                 # video paths in the records are relative to this (default: .)
    num_frames: 32                   # frames sampled per video (default: the processor's)
    stage: lora                      # alignment (projector + temporal encoder train) | sft (everything) |
                                     # lora (LoRA on the LLM; projector + temporal encoder train); default lora
    freeze: [vision_tower]           # optional: parts kept fixed on top of the stage (vision_tower, projector,
                                     # temporal_encoder, language_model, lm_head)
    part_learning_rates: {temporal_encoder: 1.0e-3}   # optional: a part's own peak learning rate (same
                                     # schedule); the other parts train at training.learning_rate
    lora: {rank: 16, alpha: 32, dropout: 0.05}   # the LoRA adapters (stage lora)
    merge_lora: false                # also write a merged full checkpoint to OUTPUT_DIR/merged
    resume: auto                     # auto (last whole checkpoint in output_dir, if any) | a checkpoint path |
                                     # false (train from the start); see "Resuming" below
    extend_schedule: false           # resume although max_steps (or num_train_epochs) changed the LR schedule
    resume_with_changes: false       # resume although batch size, learning rate, seed, num_frames... changed
    training:                        # transformers.TrainingArguments fields
      output_dir: runs/storm-lora    # * where checkpoints, the final weights and the processor go
      max_steps: 1000
      per_device_train_batch_size: 1
      learning_rate: 2.0e-4
      save_steps: 200                # a checkpoint every N steps, to resume from
      activation_checkpointing: true # recompute activations in the backward pass (less memory); the old
                                     # name gradient_checkpointing is still read
      bf16: auto                     # auto: on where the hardware supports bf16

Resuming: a run resumes from the last *whole* checkpoint (a `checkpoint-N` folder whose trainer_state.json,
weights, optimizer, scheduler and RNG files are all there and not cut off; a folder half-written by a killed
process is skipped, named and left as it is), and ends with the same weights as a run never interrupted.
Killed at any moment (SIGKILL included, also during a save), the same command continues from there. A run is
finished once storm_train_finished.json is written after the final weights. Each checkpoint records its plan
(storm_train_plan.json); a resume whose plan changes the trained result is refused with a one-line error:
a new max_steps / num_train_epochs whose learning-rate schedule differs over the steps already taken (e.g. the
default linear decay; a constant schedule extends fine), unless `extend_schedule: true`; changed batch size,
gradient accumulation, number of processes, learning rate or its schedule, weight decay, optimizer, seed,
num_frames or stage, unless `resume_with_changes: true`. `resume: false` trains from the start instead.

Under `accelerate launch --multi_gpu --num_processes N -m storm_hf train CONFIG` the same job runs data-parallel
(DDP), with per_device_train_batch_size per process; `training: {deepspeed: ds.json}` runs it under DeepSpeed ZeRO
(a config whose "optimizer" section decays weights is refused: DeepSpeed would decay A_log and D), and
`accelerate launch --use_fsdp --fsdp_version 2 ...` or `training: {fsdp: "full_shard auto_wrap", fsdp_config:
{version: 2}}` under FSDP2, where with mixed precision the temporal mixers are sharded first with A_log and D kept
fp32 (FSDP1 with mixed precision is refused) and the final model is saved whole whatever the state dict type. In a
loop of your own, `storm_hf.training.fsdp.shard_model` does the same (examples/fsdp_train.py); see the README's
engine table in "Fine-tuning".
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback


# The top-level keys a job may have (see the module docstring); anything else is a typo to report.
CONFIG_KEYS = ("model", "processor", "train_file", "video_root", "num_frames", "stage", "freeze",
               "part_learning_rates", "lora", "merge_lora", "resume", "extend_schedule", "resume_with_changes",
               "training")
# TrainingArguments' deprecated names (transformers 5.x warns; 6 drops them) and the names that replace them.
_RENAMED_TRAINING_ARGS = {"gradient_checkpointing": "activation_checkpointing",
                          "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def load_config(path: str) -> dict:
    """The job in the JSON or YAML file ``path`` (by its suffix: .yaml / .yml, else JSON), checked by
    `validate_config`. A missing or unreadable file, bad syntax or a bad key raises a ValueError (an OSError for
    the file) whose message names the file and the reason."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such config file." if not os.path.isdir(path) else
                                f"{path}: is a folder; give the job's JSON or YAML file.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}: not valid YAML{where} ({problem}).") from None
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno} ({error.msg}); "
                             "a YAML file must end in .yaml or .yml.") from None
    try:
        return validate_config(config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def validate_config(config) -> dict:
    """``config`` checked before anything loads, as a new dict: the required keys (``model``, ``train_file``,
    ``training.output_dir``) present, no unknown key at the top level or in ``training`` (a TrainingArguments
    field), ``stage`` known, and TrainingArguments' deprecated names (``gradient_checkpointing``) renamed to
    the current ones (``activation_checkpointing``) so that old configs keep working. Raises a ValueError that
    names the key and says what is wrong."""
    import dataclasses
    import difflib

    from transformers import TrainingArguments

    from .data import STAGES

    def unknown(keys, known, where):
        for key in keys:
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown key {key!r} {where}{hint}")

    if config is None:
        raise ValueError("the config is empty; it needs at least model, train_file and training.output_dir.")
    if not isinstance(config, dict):
        raise ValueError(f"the config must be a mapping of keys (model, train_file, training, ...), not "
                         f"{type(config).__name__}.")
    unknown(config, CONFIG_KEYS, f"(the keys are {', '.join(CONFIG_KEYS)})")
    for key in ("model", "train_file"):
        if not isinstance(config.get(key), str) or not config[key].strip():
            what = "a STORM checkpoint folder or Hub id" if key == "model" else "the JSON / JSONL training records"
            raise ValueError(f"the config needs {key!r}: {what}." if key not in config else
                             f"{key!r} must be {what}, got {config[key]!r}.")
    training = config.get("training")
    if not isinstance(training, dict) or not training.get("output_dir"):
        raise ValueError("the config needs training.output_dir: the folder for checkpoints and the final weights "
                         "(training: {output_dir: runs/my-job, ...}).")
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown(training, fields, "in training (not a transformers.TrainingArguments field)")
    training = dict(training)
    for old, new in _RENAMED_TRAINING_ARGS.items():
        if old in training and new in fields:
            if new in training:
                raise ValueError(f"training has both {old!r} and {new!r}: keep {new!r} ({old!r} is its deprecated "
                                 "name).")
            training[new] = training.pop(old)
    stage = config.get("stage", "lora")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}.")
    num_frames = config.get("num_frames")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"num_frames must be a whole number of frames, at least 1; got {num_frames!r}.")
    for key in ("lora", "freeze"):
        kind = dict if key == "lora" else list
        if config.get(key) is not None and not isinstance(config[key], kind):
            raise ValueError(f"{key!r} must be a {'mapping (rank, alpha, dropout)' if key == 'lora' else 'list of parts'}"
                             f", got {config[key]!r}.")
    rates = config.get("part_learning_rates")
    if rates is not None:
        if not isinstance(rates, dict):
            raise ValueError(f"'part_learning_rates' must be a mapping of part to learning rate "
                             f"({{temporal_encoder: 1.0e-3}}), got {rates!r}.")
        from .data import PARTS

        unknown(rates, PARTS, f"in part_learning_rates (the parts are {', '.join(PARTS)})")
        for part, rate in rates.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0:
                raise ValueError(f"part_learning_rates.{part} must be a learning rate (a number >= 0), got {rate!r}.")
    return {**config, "training": training}


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
    from ..modeling_storm import StormMambaMixer

    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, StormMambaMixer):
            names.update(f"{module_name}.{name}" if module_name else name for name in ("A_log", "D"))
    return names


class StormTrainer(Trainer):
    """transformers' Trainer whose weight decay skips, besides norms and biases (Trainer's own rule), the
    SSM's `A_log` and `D`, as mamba_ssm trains them. `storm-hf train` uses it; so can your own scripts.

    Its checkpoints can be told whole from half-written ones (see `storm_hf.training.checkpoints`): saving
    over an existing `checkpoint-N` folder first removes its trainer_state.json (Trainer writes it last),
    each checkpoint gets a plan record (`storm_train_plan.json`: `train_plan` plus the TrainingArguments
    that shape the weights), and its files are fsynced once the save is done. `schedule_check`, when set, is
    called with the number of steps Trainer plans before it builds the learning-rate scheduler
    (`storm-hf train` compares that plan with the checkpoint's there).
    """

    train_plan: dict | None = None
    schedule_check = None
    part_learning_rates: dict | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_fsdp(self.accelerator)

    def create_optimizer(self, model=None):
        """Trainer's optimizer; with `part_learning_rates` ({part: peak learning rate}) each parameter group is
        split by part, so that a part (e.g. a new temporal encoder next to a pretrained LLM) follows the same
        schedule from its own peak. Under DeepSpeed with bf16 or fp16, `A_log` and `D` get groups of their own.
        Under FSDP2 with mixed precision (Trainer creates the optimizer just before accelerate shards the model)
        the temporal mixers are sharded first, A_log and D in an fp32 unit of their own."""
        if self.optimizer is None:
            _shard_temporal_mixers_for_accelerate(self.accelerator, self.model)
        if self.optimizer is not None:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        opt_model = self.model if model is None else model
        parts = self.part_learning_rates or {}
        # DeepSpeed casts every parameter to bf16 / fp16 and then moves the model, which turns A_log and D back to
        # fp32 (the mixers keep them so); ZeRO then flattens each parameter group into one buffer: a group mixing
        # them with 16-bit parameters is promoted to fp32 whole, and its biases and norms feed fp32 activations into
        # bf16 layers ("self and mat2 must have the same dtype").
        casts = _deepspeed_16bit_stage(self.args) is not None
        own_groups = no_weight_decay_parameter_names(opt_model) if casts else set()
        if not parts and not own_groups:
            return optimizer
        from .data import parameter_part

        key_of = {id(parameter): (parameter_part(name, parts), name in own_groups)
                  for name, parameter in opt_model.named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            settings = {key: value for key, value in group.items() if key != "params"}
            for key in [(part, own) for part in (None, *parts) for own in (False, True)]:
                params = [p for p in group["params"] if key_of.get(id(p), (None, False)) == key]
                if params:
                    rate = settings["lr"] if key[0] is None else float(parts[key[0]])
                    groups.append({**settings, "params": params, "lr": rate})
        # The optimizer holds no state yet: its groups are replaced in place (any torch optimizer class).
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def get_decay_parameter_names(self, model) -> list[str]:
        skip = no_weight_decay_parameter_names(model)
        return [name for name in super().get_decay_parameter_names(model) if name not in skip]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.schedule_check is not None:
            self.schedule_check(num_training_steps)
        return super().create_scheduler(num_training_steps, optimizer)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from .checkpoints import invalidate_checkpoint, sync_folder

        folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            invalidate_checkpoint(folder)
        super()._save_checkpoint(model, trial)
        if self.args.world_size > 1:
            self.accelerator.wait_for_everyone()  # every process's RNG state is written
        if self.args.should_save and os.path.isdir(folder):
            sync_folder(folder)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        plugin = _fsdp_plugin(self.accelerator)
        if plugin is not None and not _internal_call and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            # Under FSDP with a sharded state dict type (accelerate's default for `accelerate launch --use_fsdp`),
            # Trainer's save_model writes no weights at all; the model it was asked for is gathered whole here
            # (every process takes part). Checkpoints keep Trainer's sharded layout, which resumes.
            self._save(output_dir or self.args.output_dir, state_dict=self.accelerator.get_state_dict(self.model))
            return
        super().save_model(output_dir, _internal_call=_internal_call)
        if not _internal_call or not output_dir or not re.fullmatch(r"checkpoint-\d+", os.path.basename(output_dir)):
            return
        # Inside a checkpoint save (Trainer writes the weights first): the other processes write their RNG
        # states into the folder only once the main one has written the weights, and the plan goes in now,
        # before the optimizer, the scheduler and trainer_state.json.
        if self.args.world_size > 1:
            self.accelerator.wait_for_everyone()
        if self.args.should_save:
            from .checkpoints import PLAN_NAME, training_plan, write_json_atomically

            os.makedirs(output_dir, exist_ok=True)  # under FSDP's sharded state dicts no weights made it yet
            plan = training_plan(self.args, **(self.train_plan or {}))
            write_json_atomically(os.path.join(output_dir, PLAN_NAME), plan)


def _fsdp_plugin(accelerator):
    from accelerate.utils import DistributedType

    state = accelerator.state
    return getattr(state, "fsdp_plugin", None) if state.distributed_type == DistributedType.FSDP else None


def _gathered_dtype_below_fp32(plugin):
    """The dtype the plugin's mixed-precision policy gathers parameters in, where it is below fp32; else None."""
    dtype = getattr(plugin.mixed_precision_policy, "param_dtype", None)
    return dtype if dtype is not None and dtype != torch.float32 else None


def _low_precision_fsdp2(accelerator):
    """accelerate's FSDP2 plugin when its mixed-precision policy gathers parameters below fp32, else None."""
    plugin = _fsdp_plugin(accelerator)
    if plugin is None or getattr(plugin, "fsdp_version", 1) != 2:
        return None
    return plugin if _gathered_dtype_below_fp32(plugin) is not None else None


def _check_fsdp(accelerator) -> None:
    """Refuse the FSDP setups under which A_log and D would reach the scan below fp32: FSDP1 with mixed precision
    (it casts every flat parameter of a unit and has no per-module policy), and FSDP2 with mixed precision and
    `cpu_ram_efficient_loading` (accelerate then reloads every parameter from rank 0's state dict captured after
    `StormTrainer` has sharded the mixers, which it cannot do with parameters already sharded)."""
    plugin = _fsdp_plugin(accelerator)
    if plugin is None:
        return
    dtype = _gathered_dtype_below_fp32(plugin)
    if getattr(plugin, "fsdp_version", 1) == 1 and dtype is not None:
        raise ValueError(
            f"FSDP version 1 with mixed precision ({dtype}) would run the temporal encoder's A_log and D in {dtype}; "
            "STORM keeps them fp32. Use FSDP version 2 (fsdp_config: {version: 2}, transformers' default), under "
            "which storm-hf train keeps them fp32, or train without mixed precision.")
    if getattr(plugin, "fsdp_version", 1) == 2 and dtype is not None and plugin.cpu_ram_efficient_loading:
        raise ValueError(
            f"FSDP2 with mixed precision ({dtype}) and cpu_ram_efficient_loading: STORM shards its temporal mixers "
            "itself to keep A_log and D fp32, and accelerate's rank-0 loading cannot reload parameters already "
            "sharded. Set fsdp_config: {cpu_ram_efficient_loading: false} (every process then loads the "
            "checkpoint into CPU memory once), or train without mixed precision.")


def _shard_temporal_mixers_for_accelerate(accelerator, model) -> None:
    """Under accelerate's FSDP2 with mixed precision (`bf16: true` with `fsdp` in TrainingArguments, or an
    accelerate config with FSDP version 2), shard the temporal mixers as `storm_hf.training.fsdp.
    shard_temporal_mixers` does, with the plugin's policy, mesh, resharding and offload: accelerate gives every unit
    one policy, which would cast A_log and D to bf16 for the scan; it skips modules already sharded and shards the
    rest of the model as before. Without mixed precision accelerate is left to shard everything."""
    plugin = _low_precision_fsdp2(accelerator)
    if plugin is None:
        return
    from .fsdp import shard_temporal_mixers

    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None:  # as accelerate's fsdp2_prepare_model picks its FSDP dimensions
        mesh = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    shard_temporal_mixers(model, plugin.mixed_precision_policy, mesh=mesh,
                          reshard_after_forward=plugin.reshard_after_forward, offload_policy=plugin.cpu_offload)


def _fsdp_fallback(args, accelerator) -> str | None:
    """The note `storm-hf train` prints when FSDP was asked for (`fsdp` in TrainingArguments, or accelerate's
    ACCELERATE_USE_FSDP) but accelerate runs without it: it turns FSDP on only for GPUs and other accelerators, and
    runs CPU processes as DDP (the same weights, every process holding the whole model) or one process alone."""
    asked = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not asked or _fsdp_plugin(accelerator) is not None:
        return None
    kind = str(accelerator.state.distributed_type).rsplit(".", 1)[-1]
    return (f"note: FSDP was asked for, but accelerate runs this job as {kind} (it turns FSDP on only for GPUs and "
            "other accelerators): the model is not sharded; every process holds all of it.")


def _require_training_packages():
    missing = [name for name in ("accelerate", "peft") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"storm-hf train needs {' and '.join(missing)}, which storm_hf installs by default; this environment "
            f"lacks it. Reinstall with `pip install -e .` (or `pip install {' '.join(missing)}`)."
        )


def _checkpoint_state(checkpoint: str) -> dict:
    from .checkpoints import STATE_NAME, read_json

    state = read_json(os.path.join(checkpoint, STATE_NAME))
    return state if isinstance(state, dict) else {}


def _final_weights_present(output_dir: str) -> bool:
    """Whether output_dir holds the final weights of a finished run: its finished record
    (storm_train_finished.json, written after the weights) is there and the weight files it lists are too,
    whole. Weights without it are a final save that was cut short."""
    from .checkpoints import finished_record

    return finished_record(output_dir) is not None


def _outputs(output_dir: str, stage: str, merged: bool) -> dict:
    outputs = {}
    if os.path.isdir(output_dir):
        names = sorted(os.listdir(output_dir))
        finished = _final_weights_present(output_dir)
        if stage == "lora" and finished and "adapter_model.safetensors" in names:
            outputs["adapter"] = output_dir
        elif finished:
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


class _StartsTraining(TrainerCallback):
    """Once Trainer starts training into output_dir (the plan checks passed), the final weights there are no
    longer this job's finished result: their finished record goes until the final save writes a new one."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def on_train_begin(self, args, state, control, **kwargs):
        from .checkpoints import clear_finished

        if state.is_world_process_zero:
            clear_finished(self.output_dir)


class _PutBackSsmValuesAfterDeepSpeedCast(TrainerCallback):
    """DeepSpeed in bf16 / fp16 casts every parameter to its 16-bit dtype when it starts (it keeps only buffers
    fp32), which rounds A_log and D; under ZeRO-0/1/2 they then train in fp32 (groups of their own, see
    StormTrainer.create_optimizer), so before the first step their values as loaded are put back, in the model and
    in DeepSpeed's fp32 master copy. Only for a run from the start (a resumed one restores both from its checkpoint)."""

    def __init__(self, values: dict):
        self.values = values  # {parameter name: fp32 values as loaded}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from deepspeed.utils import safe_set_full_fp32_param

        for name, parameter in model.named_parameters():
            if name in self.values and parameter.dtype == torch.float32:
                value = self.values[name].to(parameter.device)
                with torch.no_grad():
                    parameter.copy_(value)
                safe_set_full_fp32_param(parameter, value)  # the optimizer's master copy (trainable ones)
        self.values = {}


def _schedule_check(checkpoint: str, state: dict, args, extend: bool, say):
    """The check StormTrainer runs with the number of steps this run plans, before it builds the scheduler:
    a resume is refused (unless `extend`) when the checkpoint's steps used learning rates that a straight run
    of the new plan would not use (see training_checkpoints.changed_rate_step)."""
    from .checkpoints import changed_rate_step, describe_plan, read_plan

    step, old_total = int(state.get("global_step", 0)), int(state.get("max_steps", 0))
    old_plan = describe_plan(read_plan(checkpoint), old_total)

    def check(new_total: int):
        new_plan = describe_plan({"max_steps": args.max_steps, "num_train_epochs": args.num_train_epochs}, new_total)
        if step > new_total:
            raise ValueError(f"{checkpoint} is at step {step}, past the {new_total} steps this run plans ({new_plan}; "
                             f"the checkpoint's run planned {old_plan}). Set `resume: false` to train from the start "
                             "with the new plan, or use a new output_dir.")
        changed = changed_rate_step(args, old_total, new_total, step)
        if changed is None:
            return
        schedule = f"lr_scheduler_type {getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}"
        if args.warmup_steps:
            schedule += f", warmup_steps {args.warmup_steps:g}"
        if not extend:
            raise ValueError(
                f"{checkpoint} comes from a run planned for {old_plan} and this run plans {new_plan}: with "
                f"{schedule} the two plans give different learning rates from step {changed} on, and the "
                f"checkpoint's {step} steps followed the old plan, so resuming would end with weights that differ "
                f"from a straight run of {new_total} steps. Set `resume: false` to train from the start with the "
                "new plan, or `extend_schedule: true` to resume anyway with the changed schedule.")
        say(f"extend_schedule: true: the LR schedule changed: the {step} steps of {checkpoint} (and step {step + 1}, "
            f"at the rate its optimizer holds) follow its plan ({old_plan}), the later steps this run's ({new_plan}); "
            f"the result will differ from a straight run of {new_total} steps.")

    return check


def _check_world_size(args):
    """Refuse a launch whose processes do not train together. A launcher that starts N processes (accelerate
    launch, torchrun) sets WORLD_SIZE=N in each; a process that then trains with world size 1 (CPU processes
    without ``training.use_cpu: true``, which accelerate only joins over gloo when asked; GPU launches whose
    processes see no GPU) would run N separate trainings into the same output_dir, each saving over the others."""
    try:
        launched = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return
    if launched > 1 and args.world_size != launched:
        raise ValueError(
            f"storm-hf train: the launcher started {launched} processes (WORLD_SIZE={launched}) but this one trains "
            f"with world size {args.world_size}, so each would train the whole job alone into {args.output_dir}. "
            "On CPUs set training.use_cpu: true (data-parallel over gloo); on GPUs make sure every process sees "
            "its GPU (CUDA_VISIBLE_DEVICES)."
        )


def _check_deepspeed_optimizer(args) -> None:
    """Refuse a DeepSpeed config whose "optimizer" section decays weights: DeepSpeed then builds the optimizer from
    one group of every trainable parameter (transformers hands it no groups), so the temporal mixers' A_log and D,
    which mamba_ssm and this job keep out of weight decay, would be decayed without a word."""
    optimizer = _deepspeed_config(args).get("optimizer")
    if not optimizer:
        return
    decay = (optimizer.get("params") or {}).get("weight_decay", 0)
    decay = args.weight_decay if decay == "auto" else decay
    if decay:
        raise ValueError(
            f"training.deepspeed: the DeepSpeed config's \"optimizer\" section has weight_decay {decay}, which DeepSpeed "
            "would apply to every parameter, the temporal encoder's A_log and D included (they take no weight decay). "
            "Remove the \"optimizer\" section: the job's AdamW (training.learning_rate, training.weight_decay) then "
            "runs under DeepSpeed with A_log and D in their no-decay group.")


def _deepspeed_config(args) -> dict:
    """This job's DeepSpeed config as transformers read it ({} without DeepSpeed)."""
    if not getattr(args, "deepspeed", None):
        return {}
    return getattr(getattr(args, "hf_deepspeed_config", None), "config", None) or {}


def _deepspeed_16bit_stage(args) -> int | None:
    """The ZeRO stage (0 where the config names none) when DeepSpeed runs this job in bf16 or fp16, and so casts
    the model's parameters to that dtype; None otherwise."""
    config = _deepspeed_config(args)

    def enabled(name):  # "auto" follows TrainingArguments (transformers resolves it when the arguments are made)
        value = (config.get(name) or {}).get("enabled", False)
        return value is True or (value == "auto" and bool(getattr(args, name, False)))

    if not (enabled("bf16") or enabled("fp16")):
        return None
    return (config.get("zero_optimization") or {}).get("stage", 0)


def _deepspeed_precision_note(args) -> str | None:
    """What DeepSpeed ZeRO-3 in bf16 / fp16 does to A_log and D, which `storm-hf train` prints: DeepSpeed casts every
    parameter to the training dtype (it keeps only buffers fp32), and under ZeRO-3 the mixers then compute with
    16-bit copies (DeepSpeed's fp32 master weights keep the updates). Under ZeRO-0/1/2 they train in fp32 from
    their values as loaded (groups of their own, put back after the cast): nothing to say."""
    if _deepspeed_16bit_stage(args) in (None, 0, 1, 2):
        return None  # ZeRO-0/1/2: A_log and D train in fp32 from their values as loaded
    return ("note: DeepSpeed casts every parameter to its 16-bit dtype when it starts (it keeps only buffers fp32): "
            "under ZeRO-3 the temporal mixers' A_log and D are rounded to it and enter the scan as 16-bit copies "
            "(DeepSpeed's fp32 master weights keep the updates). FSDP2 (fsdp in the training arguments) keeps them "
            "fp32 throughout.")


def _join_deepspeed_to_the_process_group(args) -> None:
    """Under DeepSpeed ZeRO-3, `from_pretrained` builds the model inside `deepspeed.zero.Init`, which sizes its
    batch checks by DeepSpeed's own communication layer; on a CPU (DS_ACCELERATOR=cpu) that layer is not joined to
    the gloo group the launcher's processes already share, so it counts one process ("train_batch_size is not
    equal to micro_batch_per_gpu * gradient_acc_step * world_size 4 != 2 * 1 * 1"). Join it to that group first."""
    import torch.distributed as dist

    if not getattr(args, "deepspeed", None) or not dist.is_available() or not dist.is_initialized():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=dist.get_backend())


def train(config: dict, callbacks=None):
    """Run one training job described by `config` (see the module docstring).

    Returns a `TrainingRun`: the Trainer, what this call trained, the losses it logged and where the outputs
    are. With ``resume: auto`` (the default) a job whose output_dir holds an unfinished run resumes from its
    last whole checkpoint (half-written ones are skipped and named); one whose output_dir already holds a
    finished run (its last checkpoint at max_steps and the final weights saved, storm_train_finished.json
    written after them) loads nothing, trains nothing and says so. A resume that would not end with the
    weights of a straight run (another LR schedule over the steps taken, other settings) raises a ValueError
    unless the config opts in (``extend_schedule``, ``resume_with_changes``); see the module docstring.
    """
    _require_training_packages()
    from transformers import TrainingArguments, set_seed

    from ..modeling_storm import StormForConditionalGeneration
    from ..processing_storm import StormProcessor
    from .data import (StormDataCollator, apply_training_stage, freeze_parts, load_video_dataset,
                           trainable_parameters)
    from .checkpoints import save_final_outputs

    training = dict(config.get("training", {}))
    if "output_dir" not in training:
        raise ValueError("The training config needs training.output_dir.")
    if training.get("bf16") == "auto":
        training["bf16"] = bf16_supported()
    training.setdefault("remove_unused_columns", False)  # the collator needs the raw records
    training.setdefault("report_to", [])
    args = TrainingArguments(**training)
    _check_world_size(args)
    _check_deepspeed_optimizer(args)
    stage = config.get("stage", "lora")
    merge = stage == "lora" and bool(config.get("merge_lora"))
    main_process = args.process_index == 0
    say = print if main_process else (lambda *a, **k: None)
    run = TrainingRun(output_dir=os.path.abspath(args.output_dir))

    from .checkpoints import (changed_settings, checkpoint_problem, finished_record,
                                       last_complete_checkpoint, read_plan, training_plan)

    part_rates = {part: float(rate) for part, rate in sorted((config.get("part_learning_rates") or {}).items())}
    # The job's settings that shape the weights besides TrainingArguments: in this run's plan and in every
    # checkpoint's plan record, so that a resume can compare them.
    plan_settings = {"stage": stage, "num_frames": config.get("num_frames"), "part_learning_rates": part_rates}
    plan = training_plan(args, **plan_settings)
    resume = config.get("resume", "auto")
    if resume == "auto":  # the last whole checkpoint: half-written ones (a killed save) are skipped and named
        resume = last_complete_checkpoint(args.output_dir, say, model_only=args.save_only_model)
    elif resume:
        problem = checkpoint_problem(resume, model_only=args.save_only_model)
        if problem:
            raise ValueError(f"resume: {resume} is not a checkpoint to resume from ({problem}).")
    if resume:
        state = _checkpoint_state(resume)
        step, planned = int(state.get("global_step", 0)), int(state.get("max_steps", 0))
        target = args.max_steps if args.max_steps > 0 else planned
        run.start_step = run.end_step = step
        changes = changed_settings(read_plan(resume), state, plan, args.train_batch_size)
        if changes and not config.get("resume_with_changes"):
            raise ValueError(
                f"{resume} was trained with other settings than this run ({', '.join(changes)}): resuming from it "
                "would not give the weights of a straight run with the new settings (and Trainer restores the "
                "checkpoint's optimizer and scheduler, so a new learning_rate or weight_decay would not even "
                "apply). Put the settings back, set `resume: false` to train from the start with the new ones "
                "(or use a new output_dir), or set `resume_with_changes: true` to resume anyway.")
        if changes:
            say(f"resume_with_changes: true: resuming from {resume} although its settings differ "
                f"({', '.join(changes)}); the result will differ from a straight run with either.")
        finished = finished_record(args.output_dir)
        if (finished and finished.get("global_step") == step == target
                and (args.max_steps > 0 or finished.get("num_train_epochs") == args.num_train_epochs)
                and (not merge or finished.get("merged"))):
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
    _join_deepspeed_to_the_process_group(args)
    model = StormForConditionalGeneration.from_pretrained(config["model"])
    processor = StormProcessor.from_pretrained(config.get("processor", config["model"]))
    lora = config.get("lora", {})
    model = apply_training_stage(model, stage, lora_rank=lora.get("rank", 16),
                                 lora_alpha=lora.get("alpha", 32), lora_dropout=lora.get("dropout", 0.05))
    freeze_parts(model, config.get("freeze") or [])
    put_back = _deepspeed_16bit_stage(args) in (0, 1, 2) and not resume
    ssm_names = no_weight_decay_parameter_names(model) if put_back else set()
    ssm_values = {name: value.detach().clone() for name, value in model.named_parameters() if name in ssm_names}
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
                                         callbacks=[*(callbacks or []), _StartsTraining(args.output_dir)])
    if put_back:  # DeepSpeed's cast would leave A_log and D rounded to 16 bits
        trainer.add_callback(_PutBackSsmValuesAfterDeepSpeedCast(ssm_values))
    trainer.train_plan = plan_settings
    trainer.part_learning_rates = part_rates
    for note in (_fsdp_fallback(args, trainer.accelerator), _deepspeed_precision_note(args)):
        if note:
            say(note)
    if resume:
        trainer.schedule_check = _schedule_check(resume, state, args, bool(config.get("extend_schedule")), say)
    trainer.train(resume_from_checkpoint=resume or None)
    run.end_step = trainer.state.global_step
    run.losses = [(log["step"], log["loss"]) for log in trainer.state.log_history
                  if "loss" in log and log.get("step", 0) > run.start_step]
    if trainer.state.global_step < args.max_steps and trainer.control.should_training_stop:
        run.outputs = _outputs(args.output_dir, stage, merge)
        say(f"stopped at step {run.end_step} of {args.max_steps}; resume with the same command. "
            f"Outputs: {_describe_outputs(run.outputs)}.")
        return run  # stopped early (e.g. by a callback): leave the checkpoints for a resume
    # The final weights go in beside the checkpoints by rename and storm_train_finished.json last: a kill
    # before that leaves a run that resumes from its last checkpoint and saves again.
    save_final_outputs(trainer, args.output_dir, processor, merge, main_process,
                       {"global_step": trainer.state.global_step, "max_steps": args.max_steps,
                        "num_train_epochs": args.num_train_epochs})
    run.outputs = _outputs(args.output_dir, stage, merge)
    if run.losses:
        loss_text = f"loss {run.losses[0][1]:.4f} (step {run.losses[0][0]}) -> {run.losses[-1][1]:.4f} (step {run.losses[-1][0]})"
    else:
        loss_text = "no loss logged in this run"
    say(f"trained steps {run.start_step} -> {run.end_step}: {loss_text}. Outputs: {_describe_outputs(run.outputs)}.")
    return run


def main(argv=None):
    """`storm-hf train CONFIG` (the command is `storm_hf.apps.cli`, which turns input errors into one line and exit
    status 2): parses the arguments, reads the config and runs `train`; returns the `TrainingRun`."""
    import argparse

    parser = argparse.ArgumentParser(prog="storm-hf train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the job: a JSON file, or YAML (.yaml / .yml), with the keys above")
    args = parser.parse_args(argv)
    run = train(load_config(args.config))
    _leave_the_process_group()
    return run


def _leave_the_process_group() -> None:
    """Under a launcher, every process leaves together: one that exits while another still writes the final outputs
    could tear gloo's connections down under it (seen as "terminate called without an active exception" aborts)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
