# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The tiny layout: a word-level tokenizer whose special tokens sit where `StormConfig.from_preset("tiny")`
expects them, so that small models built in examples and tests need no download and no id juggling.

Ids: 0 `[PAD]`, 1 `[UNK]`, 2.. the words, then `[unusedN]` fillers, and the last four of the 512:
508 `<|im_start|>`, 509 `<|im_end|>` (the end of a chat turn: generation stops there), 510 `<image>`,
511 `<video>`.
"""

from __future__ import annotations

TINY_VOCAB_SIZE = 512
TINY_SPECIAL_TOKENS = {"[PAD]": 0, "[UNK]": 1, "<|im_start|>": 508, "<|im_end|>": 509, "<image>": 510, "<video>": 511}
CHAT_WORDS = ("user", "assistant", "system")


def word_tokenizer(words, vocab_size: int = TINY_VOCAB_SIZE):
    """A `PreTrainedTokenizerFast` splitting on whitespace and punctuation, knowing ``words`` (plus the chat
    roles) and STORM's special tokens at the tiny layout's ids (the last four ids of ``vocab_size``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    vocabulary = list(dict.fromkeys(["[PAD]", "[UNK]", *CHAT_WORDS, *words]))
    if len(vocabulary) > vocab_size - len(specials):
        raise ValueError(f"word_tokenizer: {len(vocabulary)} words do not fit a vocabulary of {vocab_size}.")
    vocabulary += [f"[unused{i}]" for i in range(vocab_size - len(specials) - len(vocabulary))] + specials
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocabulary)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="<|im_end|>", additional_special_tokens=specials)





def write_clip(path, num_frames: int = 48, size: int = 64, fps: int = 24, direction: str = "right"):
    """A short H.264 clip of a white square crossing a black frame (left to right, or ``direction="left"``),
    written with PyAV: an input for examples and snippets that needs no download. Returns ``path``."""
    import numpy as np

    from .temporal_qa import write_video

    side = size // 4
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        x = round(t * (size - side) / max(1, num_frames - 1))
        x = x if direction == "right" else size - side - x
        frames[t, size // 2 - side // 2 : size // 2 + side // 2, x : x + side] = 255
    write_video(path, frames, fps=fps, pix_fmt="yuv420p", options={})  # x264's defaults
    return path


__all__ = ["word_tokenizer", "write_clip", "TINY_SPECIAL_TOKENS", "TINY_VOCAB_SIZE"]
