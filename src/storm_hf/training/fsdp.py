"""FSDP2 for STORM: `torch.distributed.fsdp.fully_shard` applied the way accelerate applies it on GPUs (each
layer its own unit, then the root), plus what STORM needs that a policy over layer classes cannot give: the temporal
encoder's `A_log` and `D` stay fp32 under mixed precision.

Why: FSDP2's `MixedPrecisionPolicy(param_dtype=torch.bfloat16)` casts every parameter of a unit to bf16 when it
gathers them, so in a `StormTemporalBlock` unit the mixers' `A_log` and `D` reach the scan as bf16 (the decays
exp(dt * A) then carry bf16's 3 significant digits), although the model keeps them fp32 everywhere else (as
mamba_ssm does: `_keep_in_fp32_modules_strict`, and `.to(dtype)` leaves them fp32). Here every mixer is a unit of
its own with an fp32 policy that holds only `A_log` and `D`, and its projections and convolution are units of
their own with the given policy, so they still run in bf16. FSDP2 does not rename parameters: the state dict keys
stay the model's (and mamba_ssm's), and a full state dict saves with `save_pretrained` and loads with
`from_pretrained`.

    from torch.distributed.fsdp import MixedPrecisionPolicy
    from storm_hf.training.fsdp import full_state_dict, load_training_state, save_training_state, shard_model
    shard_model(model, MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    ...  # train
    state = full_state_dict(model)  # every rank calls it; rank 0 gets the tensors
    if rank == 0:
        model.save_pretrained(folder, state_dict=state)
    save_training_state("step-100", model, optimizer)  # shards of the model and optimizer, to resume exactly
    load_training_state("step-100", model, optimizer)

Under Trainer / accelerate FSDP2 (`storm-hf train` with `fsdp` in its TrainingArguments), `StormTrainer` calls
`shard_temporal_mixers` with accelerate's policy before accelerate shards the rest of the model (it skips modules
already sharded). Tested on CPU with 2 processes over gloo (tests/test_fsdp.py); on GPUs the same calls run over NCCL.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling_storm import StormMambaMixer


def fsdp_wrap_classes(model: nn.Module) -> set[str]:
    """The layer classes FSDP shards as units of their own (accelerate's `transformer_layer_cls_to_wrap`): the
    model's and its sub-models' `_no_split_modules` (the language model's decoder layers, the image encoder's
    layers, `StormTemporalBlock`)."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def _fp32_mixer_policy():
    from torch.distributed.fsdp import MixedPrecisionPolicy

    # The mixer's own unit holds only A_log and D: gathered, used and reduced in fp32; its inputs are left as they
    # come (the projections' units cast theirs).
    return MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)


def shard_temporal_mixers(model: nn.Module, mp_policy=None, **fully_shard_options) -> nn.Module:
    """Shard every temporal mixer of ``model`` in place with FSDP2: its projections and convolution as units of their
    own with ``mp_policy``, then the mixer itself, holding only `A_log` and `D`, with an fp32 policy. The rest of the
    model is left for the caller (`shard_model`) or for accelerate (`StormTrainer` calls this before accelerate's
    FSDP2 preparation, which skips modules already sharded). ``fully_shard_options``: `mesh`,
    `reshard_after_forward`, `offload_policy`, as `fully_shard` takes them. Mixers already sharded are left."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = mp_policy if mp_policy is not None else MixedPrecisionPolicy()
    for mixer in [m for m in model.modules() if isinstance(m, StormMambaMixer) and not _is_sharded(m)]:
        for part in (mixer.in_proj, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.out_proj):
            if part is not None:
                fully_shard(part, mp_policy=mp_policy, **fully_shard_options)
        fully_shard(mixer, mp_policy=_fp32_mixer_policy(), **fully_shard_options)
    return model


def shard_model(model: nn.Module, mp_policy=None, mesh=None, reshard_after_forward: bool = True) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (`fully_shard`) over ``mesh`` (default: the whole default process group)
    and return it: the temporal mixers as `shard_temporal_mixers` does (A_log and D with an fp32 policy), then every
    layer of `fsdp_wrap_classes` and the root with ``mp_policy``. Call it after
    `torch.distributed.init_process_group`, before creating the optimizer."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = mp_policy if mp_policy is not None else MixedPrecisionPolicy()
    options = dict(mesh=mesh, reshard_after_forward=reshard_after_forward)
    shard_temporal_mixers(model, mp_policy, **options)
    wrap = fsdp_wrap_classes(model)
    # Children before parents: a unit holds the parameters no unit below it holds.
    for module in reversed(list(model.modules())):
        if module is not model and type(module).__name__ in wrap and not _is_sharded(module):
            fully_shard(module, mp_policy=mp_policy, **options)
    fully_shard(model, mp_policy=mp_policy, **options)
    return model


def _is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict gathered from the shards, on CPU, for `save_pretrained(folder,
    state_dict=...)`: every rank must call it (it gathers); rank 0 gets the tensors, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_training_state(folder: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the model and the optimizer (`torch.distributed.checkpoint`) into ``folder``,
    for `load_training_state` to resume from exactly (on the same number of processes or another: the checkpoint
    is resharded on load). All or nothing: the shards go to ``folder + ".incomplete"`` first and the folder gets its
    name when every rank has written; an existing ``folder`` is refused, never overwritten. Every rank must call it."""
    import os

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    staging = folder + ".incomplete"
    problem = None
    if dist.get_rank() == 0:
        if os.path.exists(folder):
            problem = f"save_training_state: {folder} exists; choose a new folder (nothing was written)"
        elif os.path.exists(staging):
            problem = (f"save_training_state: {staging} exists, left by an interrupted save; delete it to save "
                       f"to {folder} (nothing was written)")
    problems = [problem]
    dist.broadcast_object_list(problems, src=0)
    if problems[0]:
        raise FileExistsError(problems[0])
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=staging)
    dist.barrier()
    if dist.get_rank() == 0:
        os.rename(staging, folder)
    dist.barrier()


def load_training_state(folder: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what `save_training_state` wrote into the sharded ``model`` and its ``optimizer`` (created the same way
    as before the save): training then continues exactly. Every rank must call it."""
    import os

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"load_training_state: {folder} is not a folder written by save_training_state")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
