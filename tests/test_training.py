"""Training helpers: lazy dataset, answer-only labels, stages, and a few Trainer steps on the tiny model."""

import json
import os

import pytest
import torch

from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor
from storm_hf.training import (
    IGNORE_INDEX,
    StormDataCollator,
    apply_training_stage,
    load_video_dataset,
    trainable_parameters,
)

from .tokenizer_factory import tiny_tokenizer
from .video_factory import make_video


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "clips").mkdir()
    make_video(root / "clips" / "a.mp4", num_frames=20)
    make_video(root / "clips" / "b.mp4", num_frames=12)
    records = [
        {"video": "clips/a.mp4", "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens ?"}]},
            {"role": "assistant", "content": "a square moves right"}]},
        {"video": "clips/b.mp4", "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "describe it"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "the square moves"}]},
            {"role": "user", "content": "is it up ?"},
            {"role": "assistant", "content": "no"}]},
        {"messages": [{"role": "user", "content": "what is it ?"}, {"role": "assistant", "content": "yes"}]},
    ]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return root


def tiny_setup(**overrides):
    tokenizer = tiny_tokenizer()
    config = StormConfig.from_preset("tiny", video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
                                     image_token_id=tokenizer.convert_tokens_to_ids("<image>"), **overrides)
    config.text_config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    return StormForConditionalGeneration(config), StormProcessor.from_config(config, tokenizer=tokenizer)


def test_dataset_is_lazy_and_labels_cover_only_answers(data):
    dataset = load_video_dataset(data / "train.jsonl")
    assert len(dataset) == 3 and dataset[0]["video"] == "clips/a.mp4"  # paths, nothing decoded
    _, processor = tiny_setup()
    collator = StormDataCollator(processor, video_root=str(data), num_frames=4)
    batch = collator([dataset[i] for i in range(3)])
    tokenizer = processor.tokenizer
    assert batch["pixel_values_videos"].shape[:2] == (2, 4)
    for row in range(3):
        labelled = [t for t in batch["labels"][row].tolist() if t != IGNORE_INDEX]
        text = tokenizer.decode(labelled)
        assert "<video>" not in text and "user" not in text and "[PAD]" not in text
    assert tokenizer.decode([t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]) == \
        "a square moves right <|im_end|>"  # the word-level test tokenizer joins tokens with spaces
    second = tokenizer.decode([t for t in batch["labels"][1].tolist() if t != IGNORE_INDEX])
    assert second == "the square moves <|im_end|> no <|im_end|>"
    assert (batch["labels"][batch["input_ids"] == processor.tokenizer.pad_token_id] == IGNORE_INDEX).all()


def test_stages_set_what_trains():
    model, _ = tiny_setup()
    aligned = apply_training_stage(model, "alignment")
    counts = trainable_parameters(aligned)
    assert counts["vision_tower trainable"] == 0 and counts["language_model trainable"] == 0
    assert counts["projector trainable"] == counts["projector total"] > 0
    assert counts["temporal_encoder trainable"] == counts["temporal_encoder total"] > 0
    full = trainable_parameters(apply_training_stage(model, "sft"))
    assert full["trainable"] == full["total"]
    lora = apply_training_stage(tiny_setup()[0], "lora", lora_rank=4)
    counts = trainable_parameters(lora)
    assert counts["lora trainable"] > 0 and counts["vision_tower trainable"] == 0
    assert counts["language_model trainable"] == 0  # base LLM weights frozen, adapters counted as lora
    assert counts["temporal_encoder trainable"] > 0 and counts["projector trainable"] > 0
    with pytest.raises(ValueError, match="Unknown training stage"):
        apply_training_stage(model, "pretrain")


@pytest.mark.parametrize("stage", ["alignment", "sft", "lora"])
def test_a_few_trainer_steps_lower_the_loss_and_train_only_the_stage(data, tmp_path, stage):
    from transformers import Trainer, TrainingArguments

    model, processor = tiny_setup()
    model = apply_training_stage(model, stage, lora_rank=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    dataset = load_video_dataset(data / "train.jsonl")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=8,
                             learning_rate=1e-2, report_to=[], remove_unused_columns=False, save_strategy="no",
                             logging_steps=1, use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=StormDataCollator(processor, video_root=str(data), num_frames=4))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
    for name, parameter in model.named_parameters():
        if name in frozen:
            torch.testing.assert_close(parameter, frozen[name], msg=name)


def save_tiny_checkpoint(folder):
    model, processor = tiny_setup()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def job(data, checkpoint, output_dir, stage, training=None, **extra):
    return {"model": str(checkpoint), "train_file": str(data / "train.jsonl"), "video_root": str(data),
            "num_frames": 4, "stage": stage, "lora": {"rank": 4}, **extra,
            "training": {"output_dir": str(output_dir), "max_steps": 6, "save_steps": 3,
                         "per_device_train_batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1,
                         "use_cpu": True, "disable_tqdm": True, "seed": 0, "bf16": "auto", **(training or {})}}


# The shapes of issue 22's report (tiny model, 2 temporal layers; batch 2, lr 1e-3, seed 7, save_steps 3).
ISSUE_22 = {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "seed": 7, "save_steps": 3}


@pytest.mark.parametrize("stage", ["sft", "lora"])
def test_resuming_an_interrupted_run_gives_the_same_weights(data, tmp_path, stage):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from storm_hf.training.job import train

    checkpoint = save_tiny_checkpoint(tmp_path / "base")
    assert StormConfig.from_pretrained(checkpoint).temporal_num_layers == 2
    train(job(data, checkpoint, tmp_path / "straight", stage, training=ISSUE_22))

    class StopAfterThree(TrainerCallback):  # as a kill would, but at a step boundary
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    train(job(data, checkpoint, tmp_path / "resumed", stage, training=ISSUE_22), callbacks=[StopAfterThree()])
    assert (tmp_path / "resumed" / "checkpoint-3").is_dir()
    train(job(data, checkpoint, tmp_path / "resumed", stage, training=ISSUE_22))  # resume: auto -> checkpoint-3
    name = "adapter_model.safetensors" if stage == "lora" else "model.safetensors"
    straight, resumed = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key  # bit for bit


def test_lora_adapter_reloads_and_merges_into_a_full_checkpoint(data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from storm_hf.training.job import train

    checkpoint = save_tiny_checkpoint(tmp_path / "base")
    trainer = train(job(data, checkpoint, tmp_path / "run", "lora", merge_lora=True)).trainer
    batch = StormDataCollator(StormProcessor.from_pretrained(checkpoint), video_root=str(data), num_frames=4)(
        [load_video_dataset(data / "train.jsonl")[0]])
    batch.pop("labels")
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        reloaded = PeftModel.from_pretrained(StormForConditionalGeneration.from_pretrained(checkpoint), tmp_path / "run")
        torch.testing.assert_close(reloaded.eval()(**batch).logits, expected, rtol=1e-4, atol=1e-5)
        merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "merged").eval()
        assert isinstance(merged, StormForConditionalGeneration)
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stage", ["alignment", "sft", "lora"])
def test_checkpoints_survive_the_final_save_and_a_rerun_trains_nothing(data, tmp_path, stage, capsys):
    from storm_hf.training.job import train

    checkpoint = save_tiny_checkpoint(tmp_path / "base")
    output = tmp_path / "run"
    output.mkdir()
    (output / "notes.md").write_text("mine")
    first = train(job(data, checkpoint, output, stage, merge_lora=stage == "lora"))
    from storm_hf.training.job import StormTrainer

    assert isinstance(first.trainer, StormTrainer)  # its optimizer groups skip A_log, D, norms and biases
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    for name in ("checkpoint-3", "checkpoint-6"):  # whole: weights, optimizer and trainer state
        files = set(os.listdir(output / name))
        assert "trainer_state.json" in files and "optimizer.pt" in files
        assert files & {"model.safetensors", "adapter_model.safetensors"}
    assert (output / "notes.md").read_text() == "mine"
    weights = "adapter_model.safetensors" if stage == "lora" else "model.safetensors"
    assert (output / weights).is_file() and (output / "processor_config.json").is_file()
    assert [step for step, _ in first.losses] == [1, 2, 3, 4, 5, 6] and first.end_step == 6
    assert first.outputs["checkpoints"] == [str(output / "checkpoint-3"), str(output / "checkpoint-6")]
    printed = capsys.readouterr().out
    assert f"training from the start into {output}" in printed and "2 checkpoint(s) (checkpoint-3, checkpoint-6)" in printed
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}

    again = train(job(data, checkpoint, output, stage, merge_lora=stage == "lora"))
    printed = capsys.readouterr().out
    assert f"{output} already holds a finished run at step 6 (max_steps 6); nothing to do" in printed
    assert "loss" not in printed.split("nothing to do")[1].split(".")[0]  # no stale numbers
    assert again.finished_before and again.trainer is None and again.losses == []
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()} == before  # nothing rewritten


def test_a_resumed_run_reports_only_its_own_losses(data, tmp_path, capsys):
    from transformers import TrainerCallback

    from storm_hf.training.job import train

    class StopAfterThree(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    checkpoint = save_tiny_checkpoint(tmp_path / "base")
    stopped = train(job(data, checkpoint, tmp_path / "run", "sft"), callbacks=[StopAfterThree()])
    assert stopped.end_step == 3 and "stopped at step 3 of 6; resume with the same command" in capsys.readouterr().out
    resumed = train(job(data, checkpoint, tmp_path / "run", "sft"))
    printed = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'run' / 'checkpoint-3'} (step 3 of 6)" in printed
    assert resumed.resumed_from.endswith("checkpoint-3") and resumed.start_step == 3 and resumed.end_step == 6
    assert [step for step, _ in resumed.losses] == [4, 5, 6]
    assert "trained steps 3 -> 6" in printed


DDP_SCRIPT = """
import hashlib, json, os, sys
import torch
from transformers import TrainerCallback
from storm_hf.training.job import train

config = json.load(open(sys.argv[1]))

class Fingerprint(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            digest = hashlib.sha256()
            for name, parameter in sorted(model.named_parameters()):
                digest.update(parameter.detach().cpu().numpy().tobytes())
            with open(os.path.join(sys.argv[2], f"rank{args.process_index}.json"), "w") as f:
                json.dump({"world": args.world_size, "digest": digest.hexdigest(),
                           "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None}, f)

train(config, callbacks=[Fingerprint()])
"""


def test_two_cpu_processes_keep_the_same_weights(data, tmp_path):
    import subprocess
    import sys

    checkpoint = save_tiny_checkpoint(tmp_path / "base")
    config = job(data, checkpoint, tmp_path / "ddp", "sft")
    config["training"].update(max_steps=2, save_steps=100)
    (tmp_path / "job.json").write_text(json.dumps(config))
    (tmp_path / "ddp_job.py").write_text(DDP_SCRIPT)
    # accelerate's multi-process launcher (torchrun underneath); use_cpu in the job makes it CPU DDP over gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(tmp_path / "ddp_job.py"), str(tmp_path / "job.json"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2 and ranks[0]["backend"] == "gloo"
    assert ranks[0]["digest"] == ranks[1]["digest"]


def test_lora_adapter_push_to_hub_uploads_adapter_and_trained_modules(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from transformers.utils import hub

    model = apply_training_stage(tiny_setup()[0], "lora", lora_rank=4)
    monkeypatch.setattr(hub, "hf_api", lambda: SimpleNamespace(
        create_repo=lambda repo_id, **kw: SimpleNamespace(repo_id=repo_id)))
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda repo_id, tags=None, token=None: SimpleNamespace(
        save=lambda path: open(path, "w").write("card")))
    uploaded = {}

    def record(folder, repo_id, **kwargs):
        from safetensors.torch import load_file

        uploaded["files"] = sorted(os.listdir(folder))
        uploaded["keys"] = list(load_file(os.path.join(folder, "adapter_model.safetensors")))

    monkeypatch.setattr(model, "_upload_modified_files", record)
    model.push_to_hub("me/storm-lora")
    assert "adapter_model.safetensors" in uploaded["files"] and "adapter_config.json" in uploaded["files"]
    assert any("lora_A" in k for k in uploaded["keys"])
    assert any("temporal_encoder" in k for k in uploaded["keys"]) and any("projector" in k for k in uploaded["keys"])


def test_missing_training_packages_are_named_with_the_fix(monkeypatch):
    import importlib.util

    from storm_hf.training import job as train_module

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ImportError, match=r"storm-hf train needs peft.*pip install -e \."):
        train_module.train({"training": {"output_dir": "unused"}})


def test_freeze_keeps_whole_parts_fixed_on_top_of_the_stage():
    from storm_hf.training import freeze_parts

    model = apply_training_stage(tiny_setup()[0], "sft")
    freeze_parts(model, ["vision_tower", "projector"])
    counts = trainable_parameters(model)
    assert counts["vision_tower trainable"] == counts["projector trainable"] == 0
    assert counts["temporal_encoder trainable"] == counts["temporal_encoder total"] > 0
    lora = apply_training_stage(tiny_setup()[0], "lora", lora_rank=4)
    freeze_parts(lora, ["temporal_encoder"])  # PEFT-wrapped names (modules_to_save copies) are found too
    assert trainable_parameters(lora)["temporal_encoder trainable"] == 0
    with pytest.raises(ValueError, match="Cannot freeze 'vision'.*the parts are vision_tower, projector"):
        freeze_parts(model, ["vision"])


def test_a_launch_whose_processes_would_train_alone_is_refused(data, tmp_path, monkeypatch):
    # accelerate launch --multi_gpu --num_processes 2 on CPUs without training.use_cpu: each process used to train
    # the whole job alone (world size 1) into the same output_dir; now each stops with the fix named.
    import subprocess
    import sys
    from types import SimpleNamespace

    from storm_hf.training.job import _check_world_size

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"started 2 processes \(WORLD_SIZE=2\) but this one trains with world "
                                         r"size 1.*training.use_cpu: true"):
        _check_world_size(SimpleNamespace(world_size=1, output_dir="out"))
    _check_world_size(SimpleNamespace(world_size=2, output_dir="out"))
    monkeypatch.delenv("WORLD_SIZE")
    _check_world_size(SimpleNamespace(world_size=1, output_dir="out"))

    checkpoint = save_tiny_checkpoint(tmp_path / "base")
    config = job(data, checkpoint, tmp_path / "out", "sft")
    config["training"].update(max_steps=2, save_steps=100)
    del config["training"]["use_cpu"]
    (tmp_path / "job.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "storm_hf", "train", str(tmp_path / "job.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "the launcher started 2 processes (WORLD_SIZE=2) but this one trains with world size 1" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()
