# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Training helpers: the video QA data format, a collator that decodes videos per batch and masks
everything but the answers, and the paper's training stages (alignment, sft, lora).

Data format: JSON or JSONL, one record per example::

    {"video": "clips/0001.mp4",                       # relative to a video root; optional
     "messages": [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square moves right."}]}]}

`content` items follow the processor's chat template (`{"type": "video"}` marks where the video goes;
a plain string is also accepted). Records without "video" are text-only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


class VideoQADataset(torch.utils.data.Dataset):
    """The records of a JSON (a list of records) or JSONL (one record per line) file.

    JSONL files are read lazily: loading checks every line and keeps only its byte offset, and a record is
    parsed when it is asked for, so millions of records take a few bytes each. Videos stay paths: nothing is
    decoded until a batch is collated. A line that is not a JSON object with a "messages" list raises a
    `ValueError` naming the file and the line.
    """

    def __init__(self, path):
        self.path = str(path)
        self._records = None  # JSON: the records; JSONL: None (offsets instead)
        self._offsets: list[int] = []
        with open(self.path, "rb") as f:
            head = f.read(4096).lstrip()
        if head.startswith(b"["):
            with open(self.path, encoding="utf-8") as f:
                try:
                    records = json.load(f)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{self.path}: not valid JSON ({error}).") from error
            for number, record in enumerate(records, 1):
                _check_record(record, f"{self.path}: record {number}")
            self._records = records
            return
        with open(self.path, "rb") as f:
            offset = 0
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{self.path}: line {number} is not valid JSON ({error}).") from error
                    _check_record(record, f"{self.path}: line {number}")
                    self._offsets.append(offset)
                offset += len(line)

    def __len__(self) -> int:
        return len(self._records) if self._records is not None else len(self._offsets)

    def __getitem__(self, i: int) -> dict:
        if self._records is not None:
            return self._records[i]
        with open(self.path, "rb") as f:
            f.seek(self._offsets[i])
            return json.loads(f.readline())


def _check_record(record, where: str):
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        raise ValueError(f"{where}: a record must be a JSON object with a non-empty \"messages\" list.")
    if "video" in record and record["video"] is not None and not isinstance(record["video"], str):
        raise ValueError(f"{where}: \"video\" must be a path (a string).")


def load_video_dataset(path: str) -> VideoQADataset:
    """The records of a JSON / JSONL file (see `VideoQADataset`): lazy, nothing decoded until collated."""
    return VideoQADataset(path)


@dataclass
class StormDataCollator:
    """Turns records into model inputs: renders the chat template, decodes and samples each video,
    expands placeholders, pads, and sets `labels` to -100 everywhere except the assistants' answers
    (their text and closing `<|im_end|>`): prompts, placeholders and padding are never trained on.

    Args:
        processor: a `StormProcessor`.
        video_root: folder the records' "video" paths are relative to.
        num_frames: frames sampled per video (the processor's default when None).
    """

    processor: object
    video_root: str = "."
    num_frames: int | None = None
    answer_start: str = "<|im_start|>assistant\n"
    answer_end: str = "<|im_end|>"

    def __call__(self, records: list[dict]) -> dict:
        texts, videos = [], []
        for record in records:
            messages = [_normalise_message(m) for m in record["messages"]]
            texts.append(self.processor.apply_chat_template(messages, tokenize=False))
            if record.get("video"):
                videos.append(os.path.join(self.video_root, record["video"]))
        kwargs = {} if self.num_frames is None else {"num_frames": self.num_frames}
        # Right padding for training, whatever the processor's default (left, for generation): every row's
        # positions then start at 0, as in an unpadded forward.
        batch = self.processor(text=texts, videos=videos or None, return_tensors="pt", padding=True,
                               padding_side="right", **kwargs)
        batch["labels"] = self.answer_labels(batch["input_ids"], batch["attention_mask"])
        return dict(batch)

    def answer_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """-100 everywhere except the tokens after each answer-start marker, up to and including the
        answer-end token."""
        tokenizer = self.processor.tokenizer
        start = tokenizer(self.answer_start, add_special_tokens=False)["input_ids"]
        end = tokenizer.convert_tokens_to_ids(self.answer_end)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, ids in enumerate(input_ids.tolist()):
            i = 0
            while i <= len(ids) - len(start):
                if ids[i : i + len(start)] == start:
                    j = i + len(start)
                    while j < len(ids) and attention_mask[row, j]:
                        labels[row, j] = ids[j]
                        if ids[j] == end:
                            break
                        j += 1
                    i = j
                i += 1
        return labels


def _normalise_message(message: dict) -> dict:
    content = message["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    return {"role": message["role"], "content": content}


# ----------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------

STAGES = ("alignment", "sft", "lora")


def apply_training_stage(model, stage: str, lora_rank: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05):
    """Set what trains, as in the paper's recipe, and return the model to train (a PEFT model for "lora").

    * alignment: image encoder and LLM frozen; projector and temporal encoder trained.
    * sft: everything trained.
    * lora: LoRA adapters on the LLM's linear layers; projector and temporal encoder fully trained and
      saved with the adapter (PEFT `modules_to_save`); image encoder and LLM weights frozen.
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown training stage {stage!r}; choose one of {', '.join(STAGES)}.")
    if stage == "sft":
        model.requires_grad_(True)
        return model
    if stage == "alignment":
        model.requires_grad_(False)
        model.model.projector.requires_grad_(True)
        model.model.temporal_encoder.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    llm_linear = sorted({name.split(".")[-1] for name, module in model.model.language_model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
    lora = LoraConfig(
        r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=rf"model\.language_model\..*\.({'|'.join(llm_linear)})",
        modules_to_save=["projector", "temporal_encoder"],
    )
    return get_peft_model(model, lora)


PARTS = ("vision_tower", "projector", "temporal_encoder", "language_model", "lm_head")


def parameter_part(name: str, parts) -> str | None:
    """The first of ``parts`` (names in PARTS) that the parameter ``name`` belongs to, or None; works through
    PEFT's and other wrappers' name prefixes (``base_model.model.model.temporal_encoder...``)."""
    return next((part for part in parts if f".{part}." in f".{name}"), None)


def freeze_parts(model, parts) -> None:
    """Freeze whole parts of a (possibly PEFT-wrapped) STORM model on top of its stage, e.g.
    ``["vision_tower"]`` to keep a pretrained image encoder fixed during sft. Unknown names raise a ValueError."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"Cannot freeze {', '.join(map(repr, unknown))}: the parts are {', '.join(PARTS)}.")
    for name, parameter in model.named_parameters():
        if parameter_part(name, parts) is not None:
            parameter.requires_grad_(False)


def trainable_parameters(model) -> dict[str, int]:
    """Trainable and total parameter counts per top-level part (vision_tower, projector, temporal_encoder,
    language_model, lm_head, lora) and overall."""
    counts: dict[str, list[int]] = {}
    for name, parameter in model.named_parameters():
        part = next((p for p in ("lora_", "vision_tower", "projector", "temporal_encoder", "language_model",
                                  "lm_head") if p in name), "other")
        part = "lora" if part == "lora_" else part
        trainable, total = counts.setdefault(part, [0, 0])
        counts[part] = [trainable + (parameter.numel() if parameter.requires_grad else 0), total + parameter.numel()]
    summary = {f"{part} trainable": t for part, (t, _) in counts.items()}
    summary.update({f"{part} total": n for part, (_, n) in counts.items()})
    summary["trainable"] = sum(t for t, _ in counts.values())
    summary["total"] = sum(n for _, n in counts.values())
    return summary


__all__ = ["load_video_dataset", "VideoQADataset", "StormDataCollator", "apply_training_stage", "freeze_parts",
           "parameter_part",
           "trainable_parameters", "STAGES", "PARTS",
           "IGNORE_INDEX"]
