# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Evaluating STORM on video question-answer records: scoring (`scoring`: `evaluate`, `evaluate_strides`) and the
`storm-hf eval` runner (`runner`: `run_evaluation`, lmms-eval-style letter prompts).

    from storm_hf.evaluation import evaluate
    result = evaluate(model, processor, "data/test.jsonl", video_root="data", num_frames=16)
"""

from .runner import (
    answer_letter,
    letter_prompt,
    lettered_options,
    load_eval_records,
    parse_letter,
    run_evaluation,
)
from .scoring import (
    EvaluationResult,
    chance_accuracy,
    encode_prompts,
    evaluate,
    evaluate_strides,
    prompt_messages,
    reference_answer,
)

__all__ = ["evaluate", "evaluate_strides", "EvaluationResult", "encode_prompts", "prompt_messages",
           "reference_answer", "chance_accuracy", "run_evaluation", "load_eval_records", "lettered_options",
           "letter_prompt", "parse_letter", "answer_letter"]
