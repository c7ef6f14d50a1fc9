# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Evaluating STORM on video question-answer records (the JSON / JSONL format of `storm_hf.training`).

A record's prompt is its messages up to the last assistant turn; its reference answer is ``record["answer"]``
(else the last assistant turn's text). Two ways to answer:

* ``options`` in the record (a closed set): the option with the highest log-likelihood given the prompt
  (the sum of its tokens' log-probabilities, as lmms-eval's multiple-choice scoring). Chance is
  1 / len(options), so accuracies of different question types compare.
* no options: greedy generation, compared with the answer after stripping spaces and case.

Videos are decoded by the processor (the same path as training); the visual features of a batch are computed
once and shared by every option scored.

    from storm_hf.evaluation import evaluate
    result = evaluate(model, processor, "data/test.jsonl", video_root="data", num_frames=16)
    result.accuracy, result.accuracy_by_task     # overall and per record["task"]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from ..inference import check_agreement, expanded_prompt_ids, following_the_model, video_outputs


@dataclass
class EvaluationResult:
    """predictions: one dict per record (task, question, answer, prediction, correct, option log-likelihoods);
    accuracy: the fraction correct; accuracy_by_task: {task: fraction correct}; visual_tokens: visual tokens
    the LLM was given per video."""

    predictions: list = field(default_factory=list)
    visual_tokens: int | None = None

    @property
    def accuracy(self) -> float:
        return sum(p["correct"] for p in self.predictions) / max(1, len(self.predictions))

    @property
    def accuracy_by_task(self) -> dict[str, float]:
        tasks: dict[str, list[bool]] = {}
        for p in self.predictions:
            tasks.setdefault(p["task"], []).append(p["correct"])
        return {task: sum(v) / len(v) for task, v in tasks.items()}


def prompt_messages(record: dict) -> list[dict]:
    """The record's messages before its last assistant turn (what the model is asked)."""
    messages = [_normalise(m) for m in record["messages"]]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    if last == 0:
        raise ValueError("A record to evaluate needs a user turn before its answer.")
    return messages[:last]


def reference_answer(record: dict) -> str:
    """``record["answer"]``, else the text of the last assistant turn."""
    if record.get("answer") is not None:
        return str(record["answer"])
    for message in reversed(record["messages"]):
        if message["role"] == "assistant":
            return "".join(item.get("text", "") for item in _normalise(message)["content"]).strip()
    raise ValueError("A record to evaluate needs an \"answer\" or an assistant turn.")


def _normalise(message: dict) -> dict:
    content = message["content"]
    return {"role": message["role"], "content": [{"type": "text", "text": content}] if isinstance(content, str)
            else content}


def _same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


@torch.no_grad()
def evaluate(model, processor, records, video_root: str = ".", num_frames: int | None = None,
             batch_size: int = 16, max_new_tokens: int = 16) -> EvaluationResult:
    """Answer every record and score it (see the module docstring).

    Args:
        model: a `StormForConditionalGeneration` (put in eval mode here).
        processor: the model's `StormProcessor`; during the call it counts visual tokens with the model's k, p and
            s (`model.config` is the one setting), and gets its own back afterwards.
        records: a path to a JSON / JSONL file, or a list of records.
        video_root: folder the records' "video" paths are relative to.
        num_frames: frames sampled per video (the processor's default when None).
        batch_size: records per forward pass.
        max_new_tokens: generation length for records without options.
    """
    stride = model.config.temporal_sample_s
    return evaluate_strides(model, processor, records, [stride], video_root, num_frames, batch_size,
                            max_new_tokens)[stride]


@torch.no_grad()
def evaluate_strides(model, processor, records, strides, video_root: str = ".", num_frames: int | None = None,
                     batch_size: int = 16, max_new_tokens: int = 16) -> dict[int, EvaluationResult]:
    """`evaluate` at several test-time temporal sampling strides ``s``, decoding each video once:
    {s: EvaluationResult}. The processor counts tokens as the model's config says (k, p, s), the model's and
    the processor's ``temporal_sample_s`` are set for each stride, and both are put back afterwards."""
    from ..training.data import load_video_dataset

    if isinstance(records, (str, os.PathLike)):
        dataset = load_video_dataset(records)
        records = [dataset[i] for i in range(len(dataset))]

    model.eval()
    results = {s: EvaluationResult() for s in strides}
    with following_the_model(model, processor):  # the processor counts tokens as the model's config says
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            decoded = _decode(model, processor, batch, video_root, num_frames)
            for s in strides:
                model.config.temporal_sample_s = processor.temporal_sample_s = s
                prompts, features = _prompts_and_features(model, processor, *decoded)
                _score_batch(model, processor, batch, start, prompts, features, max_new_tokens, results[s])
    return results


def _score_batch(model, processor, batch, start, prompts, features, max_new_tokens, result):
    clips = [f for f in features if f is not None]
    if result.visual_tokens is None and clips:
        result.visual_tokens = int(clips[0].shape[0])
    option_ids = [_option_ids(processor, r["options"]) if r.get("options") else None for r in batch]
    single = [i for i, ids in enumerate(option_ids) if ids is not None and all(len(t) == 1 for t in ids)]
    last_logprobs = dict(zip(single, _last_token_logprobs(model, processor, [prompts[i] for i in single],
                                                          [features[i] for i in single]))) if single else {}
    for i, record in enumerate(batch):
        answer = reference_answer(record)
        entry = {"index": start + i, "task": record.get("task", "all"), "question": _question_text(record),
                 "answer": answer}
        if i in last_logprobs:
            scores = {o: float(last_logprobs[i][t[0]]) for o, t in zip(record["options"], option_ids[i])}
        elif option_ids[i] is not None:
            scores = _sequence_loglikelihoods(model, processor, prompts[i], features[i], record["options"],
                                              option_ids[i])
        else:
            scores = None
            entry["prediction"] = _generate(model, processor, prompts[i], features[i], max_new_tokens)
        if scores is not None:
            entry["prediction"] = max(scores, key=scores.get)
            entry["option_loglikelihoods"] = scores
        entry["correct"] = _same(entry["prediction"], answer)
        result.predictions.append(entry)


def _question_text(record: dict) -> str:
    texts = [item.get("text", "") for m in prompt_messages(record) for item in m["content"] if item["type"] == "text"]
    return " ".join(t.strip() for t in texts if t.strip())


def _option_ids(processor, options) -> list[list[int]]:
    ids = [processor.tokenizer(str(option), add_special_tokens=False)["input_ids"] for option in options]
    if any(not t for t in ids):
        raise ValueError(f"An answer option tokenizes to nothing: {list(options)}.")
    return ids


def encode_prompts(model, processor, records, video_root=".", num_frames=None):
    """Per record: its prompt ids (a list, placeholders expanded) and its video's features
    ((visual tokens, dim), or None for a record without a video), computed in one pass for the batch."""
    return _prompts_and_features(model, processor, *_decode(model, processor, records, video_root, num_frames))


def _decode(model, processor, records, video_root, num_frames):
    """The records' prompts (chat template, one placeholder per video) and their videos, decoded and sampled
    by the processor: (texts, pixel values (videos, frames, 3, H, W) or None, frame counts, owning record)."""
    texts, videos, owners = [], [], []
    for i, record in enumerate(records):
        texts.append(processor.apply_chat_template(prompt_messages(record), tokenize=False,
                                                   add_generation_prompt=True))
        if record.get("video"):
            videos.append(os.path.join(video_root, record["video"]))
            owners.append(i)
    if not videos:
        return texts, None, [], owners
    kwargs = {} if num_frames is None else {"num_frames": num_frames}
    decoded = processor.video_processor(videos, **kwargs)
    pixels = torch.as_tensor(decoded["pixel_values_videos"]).to(model.device, model.dtype)
    return texts, pixels, [int(n) for n in decoded["video_num_frames"]], owners


def _prompts_and_features(model, processor, texts, pixels, counts, owners):
    """Prompt ids with each placeholder expanded to the processor's token count at its current settings, and
    the videos' features from the model at its current settings."""
    frame_counts = dict(zip(owners, counts))
    ids = [expanded_prompt_ids(processor, text, frame_counts.get(i)) for i, text in enumerate(texts)]
    features = [None] * len(texts)
    if owners:
        pooled = model.model.get_video_features(pixels, torch.tensor(counts)).pooler_output
        for owner, clip in zip(owners, pooled):
            features[owner] = clip
    return ids, features


def _last_token_logprobs(model, processor, prompts, features) -> list[torch.Tensor]:
    """Log-probabilities of the next token after each prompt (one left-padded forward pass)."""
    length = max(len(p) for p in prompts)
    pad = processor.tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (length - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    logits = model(input_ids=ids, attention_mask=mask, mm_encoder_outputs=video_outputs(features),
                   logits_to_keep=1).logits[:, -1]  # (records, vocab)
    return list(torch.log_softmax(logits.float(), dim=-1))


def _sequence_loglikelihoods(model, processor, prompt, features, options, option_ids) -> dict[str, float]:
    """{option: sum over its tokens of log p(token | prompt, earlier option tokens)}, all options in one batch."""
    length = len(prompt) + max(len(t) for t in option_ids)
    pad = processor.tokenizer.pad_token_id or 0
    rows = torch.tensor([prompt + t + [pad] * (length - len(prompt) - len(t)) for t in option_ids],
                        device=model.device)
    mask = torch.tensor([[1] * (len(prompt) + len(t)) + [0] * (length - len(prompt) - len(t)) for t in option_ids],
                        device=model.device)
    logits = model(input_ids=rows, attention_mask=mask,
                   mm_encoder_outputs=video_outputs([features] * len(option_ids))).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (options, length, vocab)
    scores = {}
    for row, (option, tokens) in enumerate(zip(options, option_ids)):
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(tokens), device=model.device)
        scores[str(option)] = float(logprobs[row, positions, torch.tensor(tokens, device=model.device)].sum())
    return scores


def _generate(model, processor, prompt, features, max_new_tokens) -> str:
    ids = torch.tensor([prompt], device=model.device)
    output = model.generate(input_ids=ids, mm_encoder_outputs=video_outputs([features]),
                            max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()


def chance_accuracy(records) -> float:
    """Expected accuracy of a uniform guess among each record's options."""
    return sum(1 / len(r["options"]) for r in records) / max(1, len(records)) if records else math.nan


__all__ = ["evaluate", "evaluate_strides", "EvaluationResult", "encode_prompts", "check_agreement", "prompt_messages", "reference_answer",
           "chance_accuracy"]
