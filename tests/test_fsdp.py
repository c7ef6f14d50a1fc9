"""FSDP2 (`storm_hf.training.fsdp`) on CPU: 2 processes over gloo, launched by torch's own launcher
(`python -m torch.distributed.run`, what accelerate runs on GPUs underneath), against one process training the
unsharded model on the same global batch; A_log and D reach the scan as fp32 under bf16 mixed precision; the
gathered full state dict saves with save_pretrained and loads with from_pretrained; a sharded training state
(model and optimizer) saved mid-run resumes exactly."""

import json
import os
import subprocess
import sys

import pytest
import torch

from storm_hf import StormForConditionalGeneration

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
    for name, tolerance in (("fp32", 1e-4), ("bf16", 5e-2)):
        loaded = StormForConditionalGeneration.from_pretrained(out / name).state_dict()
        assert list(loaded) == list(one)  # the model's own keys (and mamba_ssm's names inside the mixers)
        for key in one:
            torch.testing.assert_close(loaded[key], one[key], rtol=tolerance, atol=tolerance, msg=f"{name}: {key}")
