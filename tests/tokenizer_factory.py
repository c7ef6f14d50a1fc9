"""A small word-level tokenizer built in code (no download) with STORM's special tokens."""

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = "what happens in the video describe it a square moves left right up down answer is yes no".split()
SPECIALS = ["[PAD]", "[UNK]", "<|im_start|>", "<|im_end|>", "<video>", "<image>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + ["user", "assistant", "system", "?", "."])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        additional_special_tokens=SPECIALS[2:])
    return tokenizer
