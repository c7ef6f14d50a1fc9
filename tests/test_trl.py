"""TRL's SFTTrainer with videos (README "Fine-tuning with TRL", examples/finetune_trl.py): with
storm_hf.training.StormDataCollator as its collator the videos reach the model and train it; without it TRL renders
the text alone, and that is refused instead of training blind. TRL is in the dev extra."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor
from storm_hf.miniature.tiny import word_tokenizer, write_clip
from storm_hf.training import IGNORE_INDEX, StormDataCollator

pytest.importorskip("trl", reason="TRL is in the dev extra: pip install -e '.[dev]'")
from datasets import Dataset  # noqa: E402  (TRL's dependency)
from trl import SFTConfig, SFTTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "where does the square move ?"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl")
    (root / "clips").mkdir()
    for direction in ("left", "right"):
        write_clip(str(root / "clips" / f"{direction}.mp4"), num_frames=12, size=32, fps=12, direction=direction)
    return root


def records(with_path_in=None):
    """TRL's conversational format plus storm_hf's "video" column; every content a list (one type per column)."""
    rows = []
    for direction in ("right", "left", "left", "right"):
        video = {"type": "video"}
        if with_path_in is not None:
            video["path"] = str(with_path_in / "clips" / f"{direction}.mp4")
        rows.append({"video": f"clips/{direction}.mp4", "messages": [
            {"role": "user", "content": [video, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"the square moves {direction}"}]}]})
    return Dataset.from_list(rows)


def tiny():
    config = StormConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = StormForConditionalGeneration(config)
    tokenizer = word_tokenizer("where does the square move moves left right ?".split())
    return model, StormProcessor.from_config(config, tokenizer=tokenizer)


def sft_config(tmp_path, **overrides):
    return SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                     logging_steps=1, save_strategy="no", report_to="none", bf16=False, **overrides)


def test_sft_trainer_with_the_storm_collator_trains_on_the_videos(clips, tmp_path):
    model, processor = tiny()
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=records(),
        data_collator=StormDataCollator(processor, video_root=str(clips), num_frames=4),
        args=sft_config(tmp_path, remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values_videos"].shape == (2, 4, 3, 32, 32)  # two decoded videos of 4 frames each
    assert batch["video_num_frames"].tolist() == [4, 4]
    placeholders = (batch["input_ids"] == model.config.video_token_id).sum(dim=1)
    assert placeholders.tolist() == [model.config.num_visual_tokens(4)] * 2
    for ids, labels in zip(batch["input_ids"], batch["labels"]):  # only the answer (and its <|im_end|>) is trained
        answer = processor.decode(ids[labels != IGNORE_INDEX])
        assert answer.startswith("the square moves") and answer.endswith("<|im_end|>")
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    changed = {name for name, parameter in model.named_parameters()
               if not torch.equal(parameter.detach(), before[name])}
    # The image encoder and the temporal encoder get gradients only through the video: it was trained on.
    for part in ("vision_tower", "temporal_encoder", "projector", "language_model", "lm_head"):
        assert any(part in name for name in changed), part


def test_sft_trainer_without_the_collator_does_not_train_blind(clips, tmp_path):
    model, processor = tiny()
    # A "video" column only: TRL renders the messages through the processor, which finds a placeholder and no video.
    with pytest.raises(ValueError, match="1 <video> placeholders but 0 videos"):
        SFTTrainer(model=model, processing_class=processor, train_dataset=records(), args=sft_config(tmp_path))
    # The video's path in the messages: TRL keeps the tokens and drops the pixels; the model refuses the batch.
    trainer = SFTTrainer(model=model, processing_class=processor, train_dataset=records(with_path_in=clips),
                         args=sft_config(tmp_path))
    batch = next(iter(trainer.get_train_dataloader()))
    assert "pixel_values_videos" not in batch and (batch["input_ids"] == model.config.video_token_id).any()
    with pytest.raises(ValueError, match="pixel_values_videos"):
        model(**batch)


def test_finetune_trl_example(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "finetune_trl.py"), "--max-steps", "2"],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch: pixel_values_videos (4, 8, 3, 32, 32), video_num_frames (4,)" in result.stdout
    assert "stage sft: loss" in result.stdout and "over 2 steps" in result.stdout
    assert "saved to outputs/storm-trl; asked clips/000.mp4:" in result.stdout
    assert (tmp_path / "outputs" / "storm-trl" / "model.safetensors").is_file()
