"""FSDP2 on CPU, 2 processes over gloo under torch's own launcher (`python -m torch.distributed.run`, what accelerate
runs on GPUs underneath), against one process training the unsharded model on the same global batch.

- `storm_hf.training.fsdp` in a loop of our own: A_log and D reach the scan as fp32 under bf16 mixed precision; the
  gathered full state dict saves with save_pretrained (with the remote code) and loads with from_pretrained; a
  sharded training state (model and optimizer) saved mid-run resumes exactly.
- `storm-hf train` with `fsdp` in its TrainingArguments, through Trainer and accelerate's own FSDP2 code
  (`fsdp2_prepare_model`, full-state-dict saves, FSDP checkpoints): the same weights as one process, A_log and D fp32
  under bf16, an exact resume from Trainer's FSDP checkpoint. accelerate switches to FSDP only for GPU-like
  distributed types, so the worker sets on CPU processes the state accelerate sets on GPUs (distributed type FSDP
  and the plugin); nothing else of accelerate or Trainer is changed.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from storm_hf import StormForConditionalGeneration

from .conftest import launch_train, recording_train_worker, write_square_clips_job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each rank trains two sharded copies of the tiny model (fp32, and bf16 mixed precision with fp32 reductions) on its
# half of each global batch of 4 videos; rank 0 also trains the unsharded model on the whole batch, the 1-process
# reference. Rank 0 writes the losses, what the mixers saw, and both gathered checkpoints.
WORKER = r'''
import json, os, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy
sys.path.insert(0, os.environ["STORM_REPO"])
from tests.conftest import tiny_config, video_prompt
from storm_hf import StormForConditionalGeneration
from storm_hf.modeling_storm import StormMambaMixer
from storm_hf.training.fsdp import full_state_dict, load_training_state, save_training_state, shard_model

out = sys.argv[1]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
seen = {}
real_ssm = StormMambaMixer._ssm
def recording(self, x, *args, **kwargs):  # x: in_proj's output, in the projections' compute dtype
    seen.setdefault(self._run, set()).add((str(self.A_log.dtype), str(self.D.dtype), str(x.dtype)))
    return real_ssm(self, x, *args, **kwargs)
StormMambaMixer._ssm = recording

def build(run):
    torch.manual_seed(0)
    model = StormForConditionalGeneration(tiny_config()).train()
    for module in model.modules():
        module._run = run
    return model

policies = {"fp32": MixedPrecisionPolicy(),
            "bf16": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)}
models = {name: shard_model(build(name), policy) for name, policy in policies.items()}
if rank == 0:
    models["one-process"] = build("one-process")
# SGD: Adam would turn the ~0 gradients of parameters the loss does not depend on (attention key biases) into
# lr-sized steps whose sign is rounding noise, different in every run.
optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.2) for name, m in models.items()}
config = models["fp32"].config
ids = video_prompt(config, [4])
labels = ids.clone()
labels[ids == config.video_token_id] = -100
g = torch.Generator().manual_seed(1)
videos = torch.randn(3, 4, 4, 3, 32, 32, generator=g)  # 3 steps of a global batch of 4 videos of 4 frames
losses = {name: [] for name in models}
for step in range(3):
    for name, model in models.items():
        share = 4 if name == "one-process" else 4 // world
        first = 0 if name == "one-process" else rank * share
        loss = model(input_ids=ids.repeat(share, 1), pixel_values_videos=videos[step, first:first + share],
                     labels=labels.repeat(share, 1)).loss
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()
        total = loss.detach().clone()
        if name != "one-process":
            dist.all_reduce(total)
            total /= world
        losses[name].append(total.item())
# Exact resume: AdamW (its moments are in the checkpoint) for 3 steps straight, against 2 steps, save_training_state,
# a new sharded model and optimizer, load_training_state and the third step.
def adamw_step(model, optimizer, step):
    share = 4 // world
    loss = model(input_ids=ids.repeat(share, 1), pixel_values_videos=videos[step, rank * share:(rank + 1) * share],
                 labels=labels.repeat(share, 1)).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()

straight = shard_model(build("straight"), policies["bf16"])
straight_optimizer = torch.optim.AdamW(straight.parameters(), lr=1e-2)
straight_losses = [adamw_step(straight, straight_optimizer, step) for step in range(3)]
first = shard_model(build("first"), policies["bf16"])
first_optimizer = torch.optim.AdamW(first.parameters(), lr=1e-2)
resumed_losses = [adamw_step(first, first_optimizer, step) for step in range(2)]
save_training_state(os.path.join(out, "step-2"), first, first_optimizer)
refused = False
try:
    save_training_state(os.path.join(out, "step-2"), first, first_optimizer)
except FileExistsError:
    refused = True
second = shard_model(build("second"), policies["bf16"])
second_optimizer = torch.optim.AdamW(second.parameters(), lr=1e-2)
load_training_state(os.path.join(out, "step-2"), second, second_optimizer)
resumed_losses.append(adamw_step(second, second_optimizer, 2))
straight_state, resumed_state = full_state_dict(straight), full_state_dict(second)
states = {name: full_state_dict(models[name]) for name in policies}
if rank == 0:
    dtypes = {name: sorted({str(t.dtype) for t in state.values()}) for name, state in states.items()}
    for name, state in states.items():  # (save_pretrained takes entries out of the dict it is given)
        models[name].save_pretrained(os.path.join(out, name), state_dict=state)
    models["one-process"].save_pretrained(os.path.join(out, "one-process"))
    resume = {"straight": straight_losses, "resumed": resumed_losses, "refused_overwrite": refused,
              "weights_equal": all(torch.equal(straight_state[k], resumed_state[k]) for k in straight_state),
              "files": sorted(os.listdir(out))}
    json.dump({"losses": losses, "seen": {k: sorted(v) for k, v in seen.items()}, "dtypes": dtypes, "resume": resume},
              open(os.path.join(out, "run.json"), "w"))
dist.barrier()  # every rank leaves together (a rank tearing gloo down while rank 0 still writes can abort)
dist.destroy_process_group()
'''


def test_fsdp2_two_processes_match_one_and_keep_A_log_and_D_fp32(tmp_path):
    script = tmp_path / "fsdp_worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    env = {**os.environ, "STORM_REPO": REPO, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    run = json.load(open(out / "run.json"))
    # What the scan's mixers saw: fp32 A_log and D in every run; in_proj's output in bf16 under mixed precision.
    bf16_run = [["torch.float32", "torch.float32", "torch.bfloat16"]]
    assert run["seen"] == {"fp32": [["torch.float32", "torch.float32", "torch.float32"]], "bf16": bf16_run,
                           "one-process": [["torch.float32", "torch.float32", "torch.float32"]],
                           "straight": bf16_run, "first": bf16_run, "second": bf16_run}
    # Resume: the third step after save_training_state / load_training_state equals the straight run's, bit for bit;
    # a second save to the same folder is refused, and no staging folder is left.
    resume = run["resume"]
    assert resume["resumed"] == resume["straight"] and resume["weights_equal"] and resume["refused_overwrite"]
    assert "step-2" in resume["files"] and not any(name.endswith(".incomplete") for name in resume["files"])
    assert run["dtypes"] == {"fp32": ["torch.float32"], "bf16": ["torch.float32"]}  # stored parameters stay fp32
    reference = run["losses"]["one-process"]
    assert run["losses"]["fp32"] == pytest.approx(reference, rel=1e-5)
    assert run["losses"]["bf16"] == pytest.approx(reference, rel=2e-2)
    assert reference[-1] < reference[0]  # it trained

    one = StormForConditionalGeneration.from_pretrained(out / "one-process").state_dict()
    for name in ("fp32", "bf16"):
        assert_remote_code_saved(out / name)
    for name, tolerance in (("fp32", 1e-4), ("bf16", 5e-2)):
        loaded = StormForConditionalGeneration.from_pretrained(out / name).state_dict()
        assert list(loaded) == list(one)  # the model's own keys (and mamba_ssm's names inside the mixers)
        for key in one:
            torch.testing.assert_close(loaded[key], one[key], rtol=tolerance, atol=tolerance, msg=f"{name}: {key}")


def assert_remote_code_saved(folder):
    """A folder saved from a sharded model carries STORM's remote code, not torch's FSDP files (FSDP2 gives the model
    a class defined in torch, which transformers would save as the model's code)."""
    files = os.listdir(folder)
    assert {"modeling_storm.py", "configuration_storm.py", "selective_scan.py"} <= set(files)
    assert not [name for name in files if name.startswith("_fsdp")]
    auto_map = json.load(open(os.path.join(folder, "config.json")))["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_storm.StormForConditionalGeneration"


# accelerate's FSDP on CPU processes (see the module docstring), before `recording_train_worker`'s storm-hf train.
FSDP_ON_CPU = r'''
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

accelerate_init = AcceleratorState.__init__
def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    accelerate_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
AcceleratorState.__init__ = init_with_fsdp_on_cpu
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("accelerate-fsdp")
    write_square_clips_job(root)
    (root / "worker.py").write_text(recording_train_worker(FSDP_ON_CPU))
    return root


def train(root, name, processes, fsdp=True, bf16=False, optim="sgd", max_steps=3, launcher=None):
    """`storm-hf train`, global batch 4 over ``processes`` processes, with FSDP2 in TrainingArguments (transformers'
    default fsdp_config) when ``fsdp``, under torch's launcher or `accelerate launch` with ``launcher``; returns the
    finished launch and what each rank's mixers saw."""
    # SGD against one process: Adam would turn the ~0 gradients of parameters the loss does not depend on (attention
    # key biases) into lr-sized steps whose sign is rounding noise, different in every run.
    training = {"max_steps": max_steps, "per_device_train_batch_size": 4 // processes, "optim": optim,
                "learning_rate": 0.2 if optim == "sgd" else 1e-2, "lr_scheduler_type": "constant", "save_steps": 2,
                "logging_steps": 1, "use_cpu": True, "seed": 0, "bf16": bf16}
    if fsdp:
        training.update(fsdp="full_shard auto_wrap", fsdp_config={"version": 2})
    done = launch_train(root, name, processes, training, entry=(str(root / "worker.py"),), launcher=launcher)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = [json.load(open(root / f"{name}.seen-{rank}.json")) for rank in range(processes)]
    return done, seen


def weights(folder):
    return StormForConditionalGeneration.from_pretrained(folder).state_dict()


def test_accelerate_launch_use_fsdp_matches_one_process_and_saves_the_whole_model(workspace):
    """`accelerate launch --use_fsdp --fsdp_version 2` (the README's GPU command; accelerate's FSDP settings come from
    the launcher, with its default sharded state dicts): 2 processes give the weights of 1; Trainer's checkpoints are
    sharded (model and optimizer folders) and its final save_model would write no weights: StormTrainer gathers the
    final model whole, with STORM's remote code."""
    train(workspace, "one-process", 1, fsdp=False)
    done, seen = train(workspace, "fsdp", 2, fsdp=False, launcher=["--use_fsdp", "--fsdp_version", "2"])
    assert "trained steps 0 -> 3" in done.stdout and "Outputs: model in" in done.stdout
    assert seen == [[["torch.float32", "torch.float32", "torch.float32"]]] * 2
    assert {"pytorch_model_fsdp_0", "optimizer_0"} <= set(os.listdir(workspace / "fsdp" / "checkpoint-2"))
    assert_remote_code_saved(workspace / "fsdp")
    reference = weights(workspace / "one-process")
    got = weights(workspace / "fsdp")
    assert list(got) == list(reference)
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=key)


def test_storm_hf_train_under_accelerate_fsdp2_bf16_keeps_A_log_and_D_fp32_and_resumes_exactly(workspace):
    """bf16 mixed precision: StormTrainer shards the mixers (A_log and D in an fp32 unit) before accelerate shards the
    rest with its bf16 policy; without that the mixers see bf16 A_log and D. AdamW run for 3 steps straight, against
    2 steps and then 3 from Trainer's FSDP checkpoint (model and optimizer shards): bit for bit the same weights."""
    _, seen = train(workspace, "bf16-straight", 2, bf16=True, optim="adamw_torch")
    assert seen == [[["torch.float32", "torch.float32", "torch.bfloat16"]]] * 2
    train(workspace, "bf16-extended", 2, bf16=True, optim="adamw_torch", max_steps=2)
    assert "pytorch_model_fsdp.bin" in os.listdir(workspace / "bf16-extended" / "checkpoint-2")  # full state dicts
    done, _ = train(workspace, "bf16-extended", 2, bf16=True, optim="adamw_torch", max_steps=3)
    assert "resuming from" in done.stdout and "checkpoint-2" in done.stdout
    assert_remote_code_saved(workspace / "bf16-extended")
    straight, extended = weights(workspace / "bf16-straight"), weights(workspace / "bf16-extended")
    assert {str(value.dtype) for value in straight.values()} == {"torch.float32"}
    for key, value in straight.items():
        assert torch.equal(extended[key], value), key


@pytest.mark.parametrize("version, cpu_ram_efficient_loading, refused", [
    (1, False, "FSDP version 1 with mixed precision"), (2, True, "cpu_ram_efficient_loading: false"), (2, False, None)])
def test_fsdp_setups_that_would_cast_A_log_and_D_are_refused(version, cpu_ram_efficient_loading, refused):
    """What StormTrainer checks when it is created under accelerate's FSDP with bf16 mixed precision."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from storm_hf.training.job import _check_fsdp

    plugin = FullyShardedDataParallelPlugin(fsdp_version=version, cpu_ram_efficient_loading=cpu_ram_efficient_loading)
    plugin.set_mixed_precision("bf16")
    accelerator = SimpleNamespace(state=SimpleNamespace(distributed_type=DistributedType.FSDP, fsdp_plugin=plugin))
    if refused:
        with pytest.raises(ValueError, match=refused):
            _check_fsdp(accelerator)
    else:
        _check_fsdp(accelerator)


def test_fsdp_asked_for_where_accelerate_runs_without_it_is_said():
    """On CPU processes accelerate runs a job configured for FSDP as DDP, without a word: storm-hf train says so."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from storm_hf.training.job import _fsdp_fallback

    def accelerator(kind, plugin=None):
        return SimpleNamespace(state=SimpleNamespace(distributed_type=kind, fsdp_plugin=plugin))

    note = _fsdp_fallback(SimpleNamespace(fsdp=True), accelerator(DistributedType.MULTI_CPU))
    assert "FSDP was asked for" in note and "MULTI_CPU" in note and "not sharded" in note
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    assert _fsdp_fallback(SimpleNamespace(fsdp=True), accelerator(DistributedType.FSDP, plugin)) is None
    assert _fsdp_fallback(SimpleNamespace(fsdp=False), accelerator(DistributedType.MULTI_CPU)) is None
