"""A small word-level tokenizer built in code (no download) in the tiny layout (`storm_hf.miniature.tiny`)."""

from storm_hf.miniature.tiny import word_tokenizer

WORDS = "what happens in the video describe it a square moves left right up down answer is yes no ? .".split()


def tiny_tokenizer():
    return word_tokenizer(WORDS)
