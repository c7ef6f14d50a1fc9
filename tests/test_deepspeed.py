"""`storm-hf train` under DeepSpeed ZeRO-2 and ZeRO-3 (and plain DDP) on a CPU: 2 processes over gloo against one
process without DeepSpeed at the same global batch (the same weights, A_log and D included: their no-weight-decay
group survives DeepSpeed), ZeRO-3's gathered checkpoint loads with from_pretrained, a ZeRO-2 or ZeRO-3 run extended
from its checkpoint ends where a straight run ends, and a DeepSpeed optimizer section that would decay A_log and D is
refused. Needs deepspeed (`bash .ci/deepspeed_job` builds an environment with it); skipped without."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

deepspeed = pytest.importorskip("deepspeed", reason="needs deepspeed (bash .ci/deepspeed_job)")

from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor  # noqa: E402
from storm_hf.miniature.tiny import word_tokenizer, write_clip  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Generated clips of a square moving left or right, and a tiny random-weight STORM with its processor."""
    root = tmp_path_factory.mktemp("deepspeed")
    (root / "clips").mkdir()
    records = []
    for i in range(8):
        direction = "right" if i % 2 == 0 else "left"
        write_clip(str(root / "clips" / f"{i}.mp4"), num_frames=16, size=32, fps=8, direction=direction)
        records.append({"video": f"clips/{i}.mp4", "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "where does the square move ?"}]},
            {"role": "assistant", "content": f"the square moves {direction}"}]})
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    config = StormConfig.from_preset("tiny")
    torch.manual_seed(0)
    StormForConditionalGeneration(config).save_pretrained(root / "model")
    tokenizer = word_tokenizer("where does the square move moves left right ?".split())
    StormProcessor.from_config(config, tokenizer=tokenizer).save_pretrained(root / "model")
    return root


def train(root, name, processes, zero=None, max_steps=3, optimizer_section=None):
    """`storm-hf train` of the tiny model on the clips, global batch 4, under torch's launcher; returns the run."""
    training = {"output_dir": str(root / name), "max_steps": max_steps, "per_device_train_batch_size": 4 // processes,
                # SGD: Adam would turn the ~0 gradients of parameters the loss does not depend on (attention key
                # biases) into lr-sized steps whose sign is rounding noise, different in every run.
                "optim": "sgd", "learning_rate": 0.2, "weight_decay": 0.5, "lr_scheduler_type": "constant",
                "save_steps": 2,
                "logging_steps": 1, "use_cpu": True, "seed": 0}
    if zero is not None:
        ds = {"zero_optimization": {"stage": zero}, "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "train_batch_size": "auto", "gradient_clipping": "auto"}
        if zero == 3:
            ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
        if optimizer_section:
            ds["optimizer"] = optimizer_section
        (root / f"{name}-ds.json").write_text(json.dumps(ds))
        training["deepspeed"] = str(root / f"{name}-ds.json")
    job = {"model": str(root / "model"), "train_file": str(root / "train.jsonl"), "video_root": str(root),
           "num_frames": 4, "stage": "sft", "training": training}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(job))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", "-m", "storm_hf", "train", str(root / f"{name}.yaml")],
                          capture_output=True, text=True, timeout=600, env=env)


def weights(folder):
    return StormForConditionalGeneration.from_pretrained(folder).state_dict()


def assert_same_weights(folder, reference, tolerance=1e-5):
    got = weights(folder)
    assert list(got) == list(reference)
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, rtol=tolerance, atol=tolerance, msg=key)
        assert got[key].dtype == value.dtype, key


def test_zero2_and_zero3_with_two_processes_match_one_process_without_deepspeed(workspace):
    plain = train(workspace, "plain", 1)
    assert plain.returncode == 0, plain.stderr[-3000:]
    reference = weights(workspace / "plain")
    initial = weights(workspace / "model")
    a_log = "model.temporal_encoder.layers.0.forward_mixer.A_log"
    assert reference[a_log].dtype == torch.float32 and not torch.equal(reference[a_log], initial[a_log])
    for zero in (2, 3):
        run = train(workspace, f"zero{zero}", 2, zero=zero)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "trained steps 0 -> 3" in run.stdout
        # The same weights as one process without DeepSpeed, A_log and D included: with weight decay 0.5 a decayed
        # A_log would differ at once. ZeRO-3's checkpoint is the gathered one
        # (stage3_gather_16bit_weights_on_model_save).
        assert_same_weights(workspace / f"zero{zero}", reference)


def test_ddp_with_two_processes_matches_one_process(workspace):
    """The same comparison for plain data parallelism (no DeepSpeed config): `use_cpu: true` under the launcher is
    DDP over gloo. Here rather than in the default suite for its time (two launches)."""
    if not (workspace / "plain" / "model.safetensors").exists():
        assert train(workspace, "plain", 1).returncode == 0
    run = train(workspace, "ddp", 2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_weights(workspace / "ddp", weights(workspace / "plain"))


@pytest.mark.parametrize("zero", [2, 3])
def test_run_extended_from_its_checkpoint_ends_where_a_straight_run_ends(workspace, zero):
    straight = train(workspace, f"straight{zero}", 2, zero=zero, max_steps=3)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = train(workspace, f"extended{zero}", 2, zero=zero, max_steps=2)
    assert first.returncode == 0, first.stderr[-3000:]
    more = train(workspace, f"extended{zero}", 2, zero=zero, max_steps=3)  # constant schedule: extending is allowed
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming from" in more.stdout and "checkpoint-2" in more.stdout
    assert_same_weights(workspace / f"extended{zero}", weights(workspace / f"straight{zero}"), tolerance=0)


def test_a_deepspeed_optimizer_that_would_decay_A_log_and_D_is_refused(workspace):
    run = train(workspace, "refused", 2, zero=2, optimizer_section={"type": "AdamW", "params": {
        "lr": "auto", "weight_decay": "auto"}})
    assert run.returncode != 0
    assert "A_log and D" in run.stderr + run.stdout and "Remove the \"optimizer\" section" in run.stderr + run.stdout
    assert not (workspace / "refused" / "model.safetensors").exists()
