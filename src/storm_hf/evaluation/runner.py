# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""`storm-hf eval`: evaluate a STORM checkpoint on a local video question-answer set, with a progress bar,
per-question-type accuracy, visual tokens and seconds per sample, every prediction in a JSON file, resuming
where an interrupted run stopped, and videos decoded in a background thread while the model runs.

    storm-hf eval data/test.jsonl --model path/or/hub-id --num-frames 16 --output results.json
    storm-hf eval data/test.jsonl --scoring loglikelihood --temporal-pool 4 --sampling-stride 2

DATA is a JSON / JSONL file of records in `storm_hf.training`'s format (``video`` relative to the file's
folder or ``--video-root``, ``messages``, optional ``task``, ``answer`` and ``options``), or flat question
records (``video``, ``question``, ``answer``, optional ``options`` and ``task``), the usual form of video QA
test sets (and what lmms-eval's `datasets` JSON loader can read). Scoring:

* records without ``options``: greedy generation, correct when it equals the answer (spaces and case aside);
* records with ``options``, ``--scoring letter`` (the default, as lmms-eval's multiple-choice video tasks):
  the options are listed under the question as ``A. ...``, ``B. ...`` with "Answer with the option's letter
  from the given choices directly."; the generated answer's letter (its first word, a letter in range, or
  else the option whose text it equals) must be the answer's letter (the answer is a letter, or the text of
  an option);
* ``--scoring loglikelihood``: the prompt as written, and the option with the highest log-likelihood (the
  sum of its tokens' log-probabilities) is the prediction. ``both`` does both and reports both accuracies.

The token reduction settings (``--temporal-pool``, ``--spatial-pool``, ``--sampling-stride``) are set on the
model and its processor together (`set_token_reduction`), so the placeholder counts always agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from ..inference import TokenClock, expanded_prompt_ids, following_the_model, set_token_reduction, video_outputs
from .scoring import (
    _last_token_logprobs,
    _option_ids,
    _prompts_and_features,
    _question_text,
    _same,
    _sequence_loglikelihoods,
    prompt_messages,
    reference_answer,
)

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SCORINGS = ("letter", "loglikelihood", "both")


def load_eval_records(path) -> list[dict]:
    """The records of a JSON (a list) or JSONL file, flat question records given ``messages``: a user turn with
    the video (when there is one) and the question, and the answer as the assistant turn."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if text.lstrip().startswith("["):
            raw = [(f"record {n}", r) for n, r in enumerate(json.loads(text), 1)]
        else:
            raw = [(f"line {n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON / JSONL ({error}).") from error
    records = []
    for where, record in raw:
        if not isinstance(record, dict) or not (isinstance(record.get("messages"), list)
                                                or isinstance(record.get("question"), str)):
            raise ValueError(f"{path}: {where} is not a record with \"messages\" or a \"question\".")
        if "messages" not in record:
            user = ([{"type": "video"}] if record.get("video") else []) + [{"type": "text", "text": record["question"]}]
            answer = record.get("answer")
            if answer is None:
                raise ValueError(f"{path}: {where} has a \"question\" but no \"answer\".")
            record = {**record, "messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": str(answer)}]}
        records.append(record)
    return records


def lettered_options(options) -> str:
    """The options listed one per line as ``A. ...``, ``B. ...`` and the instruction to answer with a letter."""
    letters = string.ascii_uppercase
    options = list(options)
    if len(options) > len(letters):
        raise ValueError(f"At most {len(letters)} options can be lettered, got {len(options)}.")
    return "\n".join(f"{letters[i]}. {option}" for i, option in enumerate(options)) + "\n" + LETTER_INSTRUCTION


def letter_prompt(record: dict) -> dict:
    """The record with its options listed (``A. ...``) under the last user turn's text, and the instruction."""
    listing = lettered_options(record["options"])
    messages = prompt_messages(record)
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    content = [dict(item) for item in messages[last_user]["content"]]
    texts = [i for i, item in enumerate(content) if item["type"] == "text"]
    if texts:
        content[texts[-1]]["text"] = f"{content[texts[-1]]['text'].rstrip()}\n{listing}"
    else:
        content.append({"type": "text", "text": listing})
    messages[last_user] = {"role": "user", "content": content}
    return {**record, "messages": messages}


def answer_letter(record: dict) -> str:
    """The letter of the record's answer: the answer itself when it is a letter in range, else its option's."""
    options = [str(o) for o in record["options"]]
    answer = reference_answer(record).strip()
    letters = string.ascii_uppercase[: len(options)]
    if len(answer) == 1 and answer.upper() in letters:
        return answer.upper()
    for letter, option in zip(letters, options):
        if _same(option, answer):
            return letter
    raise ValueError(f"The answer {answer!r} is neither an option letter nor one of the options {options}.")


def parse_letter(text: str, options) -> str | None:
    """The option letter a generated answer gives: a leading letter in range ("B", "B.", "(B) ...", "B) ..."),
    else the letter of the option whose text it equals; None when it gives none."""
    letters = string.ascii_uppercase[: len(options)]
    text = text.strip()
    match = re.match(r"^\(?([A-Za-z])(?![A-Za-z])", text)  # a letter alone, not the start of a word
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    for letter, option in zip(letters, options):
        if _same(str(option), text.rstrip(".")):
            return letter
    return None


def _generate_timed(model, processor, prompt, features, max_new_tokens):
    """Greedy answer, (prefill seconds, seconds of the remaining new tokens)."""
    clock = TokenClock()
    ids = torch.tensor([prompt], device=model.device)
    start = time.perf_counter()
    output = model.generate(input_ids=ids, mm_encoder_outputs=video_outputs([features]), streamer=clock,
                            max_new_tokens=max_new_tokens, do_sample=False)
    end = time.perf_counter()
    first = clock.times[1] if len(clock.times) > 1 else end  # times[0]: the prompt was put in
    return processor.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip(), first - start, end - first


def _file_sha1(path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Checkpoint:
    """Predictions appended to ``OUTPUT.partial.jsonl`` as they are made (a header line with the run's
    settings first), so an interrupted run resumes; the final JSON replaces it atomically at the end."""

    def __init__(self, output: str, settings: dict, restart: bool):
        self.path = output + ".partial.jsonl"
        self.done: dict[int, dict] = {}
        if os.path.exists(self.path) and not restart:
            with open(self.path) as f:
                lines = f.read().splitlines()
            try:
                header = json.loads(lines[0]) if lines else None
            except json.JSONDecodeError:
                header = None
            if header != {"settings": settings}:
                raise ValueError(
                    f"{self.path} holds predictions of another evaluation (other data, model or settings); pass "
                    "--restart to start over (it is then replaced) or choose another --output."
                )
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of a run killed while writing it
                    continue
                self.done[entry["index"]] = entry
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "w") as f:
                f.write(json.dumps({"settings": settings}) + "\n")
        self._file = open(self.path, "a")

    def add(self, entries):
        for entry in entries:
            self._file.write(json.dumps(entry) + "\n")
            self.done[entry["index"]] = entry
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self, output: str, result: dict):
        self._file.close()
        tmp = output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, output)
        os.remove(self.path)

    def close(self):
        if not self._file.closed:
            self._file.close()


def run_evaluation(data, model=None, processor=None, model_name_or_path=None, video_root=None, num_frames=None,
                   fps=None, max_frames=None, temporal_pool_k=None, spatial_pool_p=None, temporal_sample_s=None,
                   batch_size=8, scoring="letter", max_new_tokens=16, output=None, restart=False, prefetch=None,
                   limit=None, progress=None, device="cpu") -> dict:
    """Evaluate and return the results (as written to ``output``; see the module docstring).

    Args:
        data: a JSON / JSONL file of records.
        model, processor: a loaded model and processor, or None to load ``model_name_or_path`` (a checkpoint
            folder or Hub id; None: the bundled model).
        num_frames / fps / max_frames: frame sampling (the processor's defaults when all are None).
        temporal_pool_k, spatial_pool_p, temporal_sample_s: token reduction for this evaluation, set on the
            model and the processor together and put back afterwards (None: the checkpoint's).
        batch_size: records whose videos are decoded and encoded together.
        scoring: "letter", "loglikelihood" or "both" for records with options.
        output: where the results JSON goes; predictions are kept in ``output + ".partial.jsonl"`` while the
            run goes on, and a run with the same settings resumes from them (``restart``: start over).
        prefetch: batches decoded ahead in a background thread (0: decode in the loop). None: 2 when the model
            is on a GPU, 0 on a CPU, where decoding and the model compete for the same cores (on the 2-core
            machine, overlapping them made the miniature evaluation 9-16% slower; benchmarks/RESULTS.md).
        limit: evaluate only the first ``limit`` records.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}.")
    if num_frames is not None and fps is not None:
        raise ValueError("Pass num_frames or fps, not both.")
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not os.path.isfile(data):
        raise FileNotFoundError(f"{data}: no such data file.")
    records = load_eval_records(data)[:limit]
    if not records:
        raise ValueError(f"{data}: no records to evaluate.")
    video_root = os.path.dirname(os.path.abspath(data)) if video_root is None else video_root
    if model is None:
        from ..inference import load

        model, processor = load(model_name_or_path, device)
    model_name = model_name_or_path or getattr(model, "name_or_path", None) or "model"
    if prefetch is None:
        prefetch = 0 if model.device.type == "cpu" else 2
    with following_the_model(model, processor, temporal_pool_k, spatial_pool_p, temporal_sample_s):
        c = model.config
        frames = {"num_frames": num_frames, "fps": fps, "max_frames": max_frames}
        settings = {"data": os.path.abspath(data), "data_sha1": _file_sha1(data), "model": str(model_name),
                    "limit": limit, "scoring": scoring, "max_new_tokens": max_new_tokens, **frames,
                    "temporal_pool_k": c.temporal_pool_k, "spatial_pool_p": c.spatial_pool_p,
                    "temporal_sample_s": c.temporal_sample_s}
        output = output or os.path.join("storm-eval", os.path.splitext(os.path.basename(data))[0] + ".json")
        checkpoint = _Checkpoint(output, settings, restart)
        try:
            timing = _run(model, processor, records, video_root, frames, batch_size, scoring, max_new_tokens,
                          checkpoint, prefetch, progress)
            result = _summary(settings, [checkpoint.done[i] for i in range(len(records))], timing, scoring)
            checkpoint.finish(output, result)
        finally:
            checkpoint.close()
    result["output"] = output
    return result


def _decode_batch(processor, batch, video_root, frames, scoring):
    """Prompts (chat template; options lettered for letter scoring) and decoded videos of a batch of records,
    and the seconds it took: (texts, pixel values or None, frame counts, owners, letter texts, seconds)."""
    start = time.perf_counter()
    texts, lettered, videos, owners = [], [], [], []
    for i, record in enumerate(batch):
        texts.append(processor.apply_chat_template(prompt_messages(record), tokenize=False, add_generation_prompt=True))
        lettered.append(processor.apply_chat_template(prompt_messages(letter_prompt(record)), tokenize=False,
                                                      add_generation_prompt=True)
                        if record.get("options") and scoring != "loglikelihood" else None)
        if record.get("video"):
            videos.append(os.path.join(video_root, record["video"]))
            owners.append(i)
    pixels, counts = None, []
    if videos:
        kwargs = {key: value for key, value in frames.items() if value is not None}
        if kwargs.get("fps") is not None:
            kwargs.setdefault("num_frames", None)
        decoded = processor.video_processor(videos, **kwargs)
        pixels = torch.as_tensor(decoded["pixel_values_videos"])
        counts = [int(n) for n in decoded["video_num_frames"]]
    return texts, pixels, counts, owners, lettered, time.perf_counter() - start


def _batches(records, batch_size, done):
    """(start, records) of the batches that still have records to evaluate."""
    for start in range(0, len(records), batch_size):
        if any(i not in done for i in range(start, min(len(records), start + batch_size))):
            yield start, records[start : start + batch_size]


@torch.no_grad()
def _run(model, processor, records, video_root, frames, batch_size, scoring, max_new_tokens, checkpoint, prefetch,
         progress):
    from ..video_io import _progress_bar

    model.eval()
    todo = list(_batches(records, batch_size, checkpoint.done))
    bar = _progress_bar(progress, len(records), "evaluation")
    if bar is not None:
        bar.set_description("evaluating")
        bar.update(len(checkpoint.done))
    timing = {"decode_seconds": 0.0, "decode_wait_seconds": 0.0, "wall_seconds": 0.0}
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storm-hf-eval-decode") if prefetch else None
    try:
        pending = []  # futures of the next batches' decodes, in order
        for position, (start, batch) in enumerate(todo):
            if pool is not None:
                while len(pending) < prefetch + 1 and position + len(pending) < len(todo):
                    ahead = todo[position + len(pending)][1]
                    pending.append(pool.submit(_decode_batch, processor, ahead, video_root, frames, scoring))
                waited = time.perf_counter()
                decoded = pending.pop(0).result()
                timing["decode_wait_seconds"] += time.perf_counter() - waited
            else:
                decoded = _decode_batch(processor, batch, video_root, frames, scoring)
                timing["decode_wait_seconds"] += decoded[-1]
            timing["decode_seconds"] += decoded[-1]
            entries = _score(model, processor, batch, start, decoded, scoring, max_new_tokens)
            entries = [e for e in entries if e["index"] not in checkpoint.done]
            checkpoint.add(entries)
            if bar is not None:
                bar.update(len(entries))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    timing["wall_seconds"] = time.perf_counter() - started
    return timing


def _score(model, processor, batch, start, decoded, scoring, max_new_tokens) -> list[dict]:
    texts, pixels, counts, owners, lettered, decode_seconds = decoded
    n = len(batch)
    encode_start = time.perf_counter()
    if pixels is not None:
        pixels = pixels.to(model.device, model.dtype)
    prompts, features = _prompts_and_features(model, processor, texts, pixels, counts, owners)
    encode_seconds = time.perf_counter() - encode_start
    frame_counts = dict(zip(owners, counts))
    letter_prompts = [None if text is None else expanded_prompt_ids(processor, text, frame_counts.get(i))
                      for i, text in enumerate(lettered)]  # the same video features: only the text differs
    entries = []
    for i, record in enumerate(batch):
        seconds = {"decode": decode_seconds / n, "encode": encode_seconds / n, "prefill": 0.0, "generate": 0.0}
        entry = {"index": start + i, "task": record.get("task", "all"), "question": _question_text(record),
                 "answer": reference_answer(record),
                 "visual_tokens": int(features[i].shape[0]) if features[i] is not None else 0}
        options = record.get("options")
        if options and scoring in ("loglikelihood", "both"):
            t = time.perf_counter()
            scores = _option_scores(model, processor, prompts[i], features[i], options)
            seconds["prefill"] += time.perf_counter() - t
            entry["option_loglikelihoods"] = scores
            entry["prediction_loglikelihood"] = max(scores, key=scores.get)
            entry["correct_loglikelihood"] = _same(entry["prediction_loglikelihood"], entry["answer"])
        if options and scoring in ("letter", "both"):
            text, prefill, generate = _generate_timed(model, processor, letter_prompts[i], features[i], max_new_tokens)
            seconds["prefill"] += prefill
            seconds["generate"] += generate
            entry["generated"] = text
            entry["prediction_letter"] = parse_letter(text, options)
            entry["answer_letter"] = answer_letter(record)
            entry["correct_letter"] = entry["prediction_letter"] == entry["answer_letter"]
        if not options:
            text, prefill, generate = _generate_timed(model, processor, prompts[i], features[i], max_new_tokens)
            seconds["prefill"] += prefill
            seconds["generate"] += generate
            entry["prediction"] = text
            entry["correct"] = _same(text, entry["answer"])
        else:
            entry["correct"] = entry["correct_letter" if scoring in ("letter", "both") else "correct_loglikelihood"]
        entry["seconds"] = {key: round(value, 6) for key, value in seconds.items()}
        entries.append(entry)
    return entries


def _option_scores(model, processor, prompt, features, options) -> dict[str, float]:
    option_ids = _option_ids(processor, options)
    if all(len(t) == 1 for t in option_ids):
        logprobs = _last_token_logprobs(model, processor, [prompt], [features])[0]
        return {str(o): float(logprobs[t[0]]) for o, t in zip(options, option_ids)}
    return _sequence_loglikelihoods(model, processor, prompt, features, options, option_ids)


def _accuracy(entries, key):
    by_task: dict[str, list[bool]] = {}
    for entry in entries:
        if key in entry:
            by_task.setdefault(entry["task"], []).append(bool(entry[key]))
    scored = [v for values in by_task.values() for v in values]
    return (sum(scored) / len(scored) if scored else None,
            {task: sum(v) / len(v) for task, v in sorted(by_task.items())})


def _summary(settings, entries, timing, scoring) -> dict:
    accuracy, by_task = _accuracy(entries, "correct")
    result = {"settings": settings, "records": len(entries), "accuracy": accuracy, "accuracy_by_task": by_task}
    if scoring == "both":
        for kind in ("letter", "loglikelihood"):
            result[f"accuracy_{kind}"], result[f"accuracy_by_task_{kind}"] = _accuracy(entries, f"correct_{kind}")
    tokens = [e["visual_tokens"] for e in entries]
    result["visual_tokens_per_sample"] = sum(tokens) / len(tokens)
    result["seconds_per_sample"] = {key: sum(e["seconds"][key] for e in entries) / len(entries)
                                    for key in ("decode", "encode", "prefill", "generate")}
    result["timing_this_run"] = timing  # of this run only (a resumed run did not redo earlier records)
    result["predictions"] = entries
    return result


def main(argv=None) -> dict:
    import argparse

    parser = argparse.ArgumentParser(prog="storm-hf eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a JSON / JSONL file of records (the two forms above)")
    parser.add_argument("--model", help="checkpoint folder or Hub id (default: the bundled model)")
    parser.add_argument("--video-root", help="folder the records' video paths are relative to (default: DATA's)")
    sampling = parser.add_argument_group("frame sampling (default: the checkpoint processor's settings)")
    sampling.add_argument("--num-frames", type=int, help="frames sampled evenly over each video")
    sampling.add_argument("--fps", type=float, help="frames sampled per second of video instead of --num-frames")
    sampling.add_argument("--max-frames", type=int, help="at most this many frames per video (caps --fps on long "
                          "videos)")
    reduction = parser.add_argument_group("token reduction (default: the checkpoint's; set on the model and the "
                                          "processor together)")
    reduction.add_argument("--temporal-pool", type=int, dest="temporal_pool_k", metavar="K",
                           help="k: average every K consecutive frames' tokens")
    reduction.add_argument("--spatial-pool", type=int, dest="spatial_pool_p", metavar="P",
                           help="p: average P x P tokens within each frame")
    reduction.add_argument("--sampling-stride", type=int, dest="temporal_sample_s", metavar="S",
                           help="s: test-time temporal sampling, keep one pooled frame in S")
    parser.add_argument("--batch-size", type=int, default=8, help="records per model call (default 8)")
    parser.add_argument("--scoring", choices=SCORINGS, default="letter",
                        help="how records with options are scored: the generated letter (default), the option "
                        "with the highest log-likelihood, or both")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length at most when generating "
                        "(default 16)")
    parser.add_argument("--output", help="results JSON (default: storm-eval/DATA_NAME.json); predictions are "
                        "also appended to OUTPUT.partial.jsonl as they are made, for resuming")
    parser.add_argument("--restart", action="store_true", help="discard the partial results of an earlier run")
    parser.add_argument("--prefetch", type=int, help="batches decoded ahead in a background thread (0: none; "
                        "default: 2 on a GPU, 0 on a CPU, where decoding competes with the model for the cores)")
    parser.add_argument("--limit", type=int, help="only the first N records")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs (default: cuda when available, else cpu)")
    args = parser.parse_args(argv)
    result = run_evaluation(
        args.data, model_name_or_path=args.model, video_root=args.video_root, num_frames=args.num_frames,
        fps=args.fps, max_frames=args.max_frames, temporal_pool_k=args.temporal_pool_k,
        spatial_pool_p=args.spatial_pool_p, temporal_sample_s=args.temporal_sample_s, batch_size=args.batch_size,
        scoring=args.scoring, max_new_tokens=args.max_new_tokens, output=args.output, restart=args.restart,
        prefetch=args.prefetch, limit=args.limit, device=args.device,
    )
    print(f"{result['records']} records, accuracy {result['accuracy']:.3f}")
    for task, value in result["accuracy_by_task"].items():
        print(f"  {task}: {value:.3f}")
    for kind in ("letter", "loglikelihood"):
        if f"accuracy_{kind}" in result:
            print(f"{kind} scoring: accuracy {result[f'accuracy_{kind}']:.3f}")
    seconds = result["seconds_per_sample"]
    print(f"visual tokens per sample {result['visual_tokens_per_sample']:.0f}; seconds per sample: "
          + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()))
    print(f"results: {result['output']}")
    return result


__all__ = ["run_evaluation", "set_token_reduction", "load_eval_records", "lettered_options", "letter_prompt",
           "parse_letter", "answer_letter"]
