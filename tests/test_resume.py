"""storm-hf train's resume (issue 22): a changed plan is refused or explicitly accepted, half-written
checkpoints are skipped, and a process killed with SIGKILL (also while saving) resumes to the same weights."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from storm_hf.training.job import train
from storm_hf.training.checkpoints import changed_rate_step

from .test_training import ISSUE_22, data, job, save_tiny_checkpoint  # noqa: F401  (data: the fixture)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("resume") / "base")


def issue_job(data, base, output_dir, max_steps, **training):
    return job(data, base, output_dir, "sft", training={**ISSUE_22, "max_steps": max_steps, **training})


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def assert_same_weights(a, b):
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.fixture(scope="module")
def straight(data, base, tmp_path_factory):  # noqa: F811
    """The uninterrupted 6-step run of the issue's shapes."""
    output = tmp_path_factory.mktemp("straight")
    train(issue_job(data, base, output, 6))
    return output / "model.safetensors"


def test_a_longer_max_steps_is_refused_unless_extend_schedule(data, base, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "run"
    train(issue_job(data, base, output, 3))
    capsys.readouterr()
    with pytest.raises(ValueError) as refused:
        train(issue_job(data, base, output, 6))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{output / 'checkpoint-3'} comes from a run planned for max_steps 3 and this run "
                              "plans max_steps 6: with lr_scheduler_type linear the two plans give different "
                              "learning rates from step 2 on")
    assert "differ from a straight run of 6 steps" in message
    assert "`resume: false`" in message and "`extend_schedule: true`" in message
    assert not (output / "checkpoint-6").exists()
    train(issue_job(data, base, output, 3))  # the refusal changed nothing: the 3-step run is still finished
    assert "already holds a finished run at step 3 (max_steps 3)" in capsys.readouterr().out

    extended = train(issue_job(data, base, output, 6) | {"extend_schedule": True})
    printed = capsys.readouterr().out
    assert "extend_schedule: true: the LR schedule changed" in printed and "straight run of 6 steps" in printed
    assert extended.start_step == 3 and extended.end_step == 6 and (output / "checkpoint-6").is_dir()
    with pytest.raises(ValueError, match=r"checkpoint-6 is at step 6, past the 3 steps this run plans"):
        train(issue_job(data, base, output, 3))  # fewer steps than done: never 'finished', never resumed


def test_a_constant_schedule_extends_to_the_straight_run_exactly(data, base, tmp_path):  # noqa: F811
    constant = {"lr_scheduler_type": "constant"}
    train(issue_job(data, base, tmp_path / "straight", 6, **constant))
    train(issue_job(data, base, tmp_path / "extended", 3, **constant))
    assert train(issue_job(data, base, tmp_path / "extended", 6, **constant)).start_step == 3
    assert_same_weights(tmp_path / "extended" / "model.safetensors", tmp_path / "straight" / "model.safetensors")


def test_changed_settings_are_refused_unless_resume_with_changes(data, base, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "run"
    train(issue_job(data, base, output, 6), callbacks=[StopAt(3)])
    changed = issue_job(data, base, output, 6, learning_rate=2e-3) | {"num_frames": 2}
    with pytest.raises(ValueError, match=r"checkpoint-3 was trained with other settings than this run \("
                                         r"num_frames 4 -> 2, learning_rate 0.001 -> 0.002\).*"
                                         r"`resume: false`.*`resume_with_changes: true`"):
        train(changed)
    plan = output / "checkpoint-3" / "storm_train_plan.json"
    saved = plan.read_text()
    plan.unlink()  # a checkpoint without our record: trainer_state.json's batch size is still compared
    with pytest.raises(ValueError, match=r"\(train_batch_size 2 -> 3\)"):
        train(issue_job(data, base, output, 6, per_device_train_batch_size=3))
    plan.write_text(saved)
    with pytest.raises(ValueError, match=r"\(part_learning_rates \{\} -> \{'temporal_encoder': 0.01\}\)"):
        train(issue_job(data, base, output, 6) | {"part_learning_rates": {"temporal_encoder": 1e-2}})
    capsys.readouterr()
    resumed = train(changed | {"resume_with_changes": True})
    assert "resume_with_changes: true: resuming from" in capsys.readouterr().out and resumed.end_step == 6


def test_the_schedule_check_compares_the_learning_rates_already_used(tmp_path):
    def first_change(old, new, step, **schedule):
        args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, report_to=[], **schedule)
        return changed_rate_step(args, old, new, step)

    assert first_change(3, 6, 3) == 2  # linear decay to 0 over 3 steps, then over 6
    assert first_change(3, 6, 3, lr_scheduler_type="cosine") == 2
    assert first_change(3, 6, 3, lr_scheduler_type="constant") is None
    assert first_change(4, 8, 3, lr_scheduler_type="constant_with_warmup", warmup_steps=2) is None  # warmup over
    assert first_change(4, 8, 3, lr_scheduler_type="constant_with_warmup", warmup_steps=0.5) == 2  # 2 vs 4 steps
    assert first_change(10, 20, 2, lr_scheduler_type="linear", warmup_steps=3) is None  # still warming up
    assert first_change(10, 20, 3, lr_scheduler_type="linear", warmup_steps=3) is None  # step 4 at the peak
    assert first_change(10, 20, 4, lr_scheduler_type="linear", warmup_steps=3) == 5
    assert first_change(6, 6, 3) is None


def test_half_written_checkpoints_are_skipped_named_and_left(data, base, straight, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "run"
    train(issue_job(data, base, output, 6), callbacks=[StopAt(3)])
    whole = output / "checkpoint-3"

    def copy(step):  # checkpoint-3 as if written at `step`
        folder = output / f"checkpoint-{step}"
        shutil.copytree(whole, folder)
        state = json.loads((folder / "trainer_state.json").read_text())
        (folder / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))
        return folder

    def cut(path):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    (copy(4) / "trainer_state.json").unlink()  # killed before Trainer's last write
    cut(copy(5) / "model.safetensors")
    cut(copy(6) / "trainer_state.json")  # killed during the last write; the resumed run saves over it
    cut(copy(7) / "optimizer.pt")
    (copy(8) / "rng_state.pth").unlink()
    left = {p: p.read_bytes() for step in (4, 5, 7, 8) for p in (output / f"checkpoint-{step}").iterdir()}
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"checkpoint-5 is not a checkpoint to resume from \(model.safetensors is "
                                         r"cut off \(\d+ of \d+ bytes\)\)"):
        train(issue_job(data, base, output, 6) | {"resume": str(output / "checkpoint-5")})

    resumed = train(issue_job(data, base, output, 6))
    printed = capsys.readouterr().out
    for step, problem in [(8, "no rng_state.pth"), (7, "optimizer.pt is cut off"),
                          (6, "trainer_state.json is cut off"), (5, "model.safetensors is cut off"),
                          (4, "no trainer_state.json")]:
        assert f"skipping {output / f'checkpoint-{step}'}: incomplete ({problem}" in printed, step
    assert printed.count("left as it is") == 5
    assert resumed.resumed_from == str(whole) and resumed.end_step == 6
    assert_same_weights(output / "model.safetensors", straight)
    assert {p: p.read_bytes() for p in left} == left  # not deleted, not touched
    assert json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


# A test-only wrapper around `storm-hf train`: it stops (and waits to be killed) at the point STORM_TEST_STOP
# names: in the middle of writing a checkpoint's trainer_state.json (half of it written, as a kill in that
# write leaves it), or in the final save once model.safetensors has been moved into output_dir.
DRIVER = r"""
import os, sys, time
from transformers.trainer_callback import TrainerState

STOP = os.environ.get("STORM_TEST_STOP", "")


def stop(what):
    print(f"STOPPED at {what}", flush=True)
    time.sleep(600)


real_state = TrainerState.save_to_json


def save_state(self, path):  # trainer_state.json, Trainer's last write into a checkpoint
    if STOP and path.endswith(STOP):
        real_state(self, path)
        with open(path, "r+") as f:
            f.truncate(os.path.getsize(path) // 2)
        stop(STOP)
    return real_state(self, path)


real_replace = os.replace


def replace(source, target, *args, **kwargs):  # the final save moving the weights into output_dir
    real_replace(source, target, *args, **kwargs)
    if STOP == "final" and os.path.basename(target) == "model.safetensors" and "checkpoint-" not in str(target):
        stop(STOP)


TrainerState.save_to_json, os.replace = save_state, replace
from storm_hf.apps.cli import main

sys.exit(main(["train", sys.argv[1]]))
"""


def run_until(command, stop, env):
    """Run `command`; with `stop`, SIGKILL it once it reports that it stopped there. Returns its output."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**env, "STORM_TEST_STOP": stop})
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if stop and line.startswith(f"STOPPED at {stop}"):
                os.kill(process.pid, signal.SIGKILL)
                break
        returncode = process.wait()
    finally:
        watchdog.cancel()
        process.stdout.close()
    output = "".join(lines)
    if stop:
        assert returncode == -signal.SIGKILL and f"STOPPED at {stop}" in output, output[-3000:]
    else:
        assert returncode == 0, output[-3000:]
    return output


def test_a_job_killed_anywhere_resumes_to_the_same_weights(data, base, tmp_path):  # noqa: F811
    straight = tmp_path / "straight"
    train(issue_job(data, base, straight, 8, save_steps=2))
    output = tmp_path / "run"
    (tmp_path / "job.json").write_text(json.dumps(issue_job(data, base, output, 8, save_steps=2)))
    (tmp_path / "driver.py").write_text(DRIVER)
    command = [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "job.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    # 1. Killed while writing trainer_state.json, the last file of checkpoint-4: everything else is there.
    printed = run_until(command, "checkpoint-4/trainer_state.json", env)
    assert "training from the start" in printed and (output / "checkpoint-4" / "optimizer.pt").is_file()
    # 2. Resumed from checkpoint-2 (checkpoint-4 skipped, then saved over), killed in the final save once
    #    model.safetensors is in output_dir.
    printed = run_until(command, "final", env)
    assert f"skipping {output / 'checkpoint-4'}: incomplete (trainer_state.json is cut off" in printed, printed[-3000:]
    assert f"resuming from {output / 'checkpoint-2'} (step 2 of 8)" in printed
    assert (output / "model.safetensors").is_file() and not (output / "storm_train_finished.json").exists()
    # 3. The final weights without their finished record are not a finished run: resumed at step 8, saved again.
    printed = run_until(command, "", env)
    assert f"resuming from {output / 'checkpoint-8'} (step 8 of 8)" in printed
    assert "already holds a finished run" not in printed and "trained steps 8 -> 8" in printed
    assert (output / "storm_train_finished.json").is_file() and not (output / ".storm_final_saving").exists()
    assert_same_weights(output / "model.safetensors", straight / "model.safetensors")
    for step in (2, 4, 6, 8):
        assert_same_weights(output / f"checkpoint-{step}" / "model.safetensors",
                            straight / f"checkpoint-{step}" / "model.safetensors")
    assert json.loads((output / "storm_train_finished.json").read_text())["global_step"] == 8
