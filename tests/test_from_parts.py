"""Building STORM from existing (small, locally made) SigLIP / CLIP and Qwen2 / Llama checkpoints."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from storm_hf import StormForConditionalGeneration, StormProcessor

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=4)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def save_tokenizer(folder):
    words = "[PAD] [UNK] what happens in the video ? describe it".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    return len(words)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**VISION)).save_pretrained(root / "siglip-vision")
    SiglipModel(SiglipConfig(vision_config=VISION, text_config=dict(hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, vocab_size=50))).save_pretrained(root / "siglip")
    CLIPVisionModel(CLIPVisionConfig(**VISION, projection_dim=16)).save_pretrained(root / "clip-vision")
    vocab = save_tokenizer(root / "qwen2")
    Qwen2ForCausalLM(Qwen2Config(**TEXT, vocab_size=vocab)).save_pretrained(root / "qwen2")
    save_tokenizer(root / "llama")
    LlamaForCausalLM(LlamaConfig(**TEXT, vocab_size=vocab)).save_pretrained(root / "llama")
    return root


@pytest.mark.parametrize("vision,text", [("siglip-vision", "qwen2"), ("siglip", "llama"), ("clip-vision", "qwen2")])
def test_built_model_keeps_both_parts_and_runs(parts, vision, text):
    model, processor = StormForConditionalGeneration.from_vision_text_pretrained(
        parts / vision, parts / text, temporal_pool_k=2, temporal_num_layers=1, return_processor=True)
    assert isinstance(processor, StormProcessor)
    source_vision = SiglipVisionModel if "siglip" in vision else CLIPVisionModel
    reference = (SiglipModel if vision == "siglip" else source_vision).from_pretrained(parts / vision)
    reference = getattr(reference, "vision_model", reference)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.model.vision_tower.state_dict()[name], tensor, msg=name)
    lm = (Qwen2ForCausalLM if text == "qwen2" else LlamaForCausalLM).from_pretrained(parts / text)
    old_vocab = lm.config.vocab_size
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(processor.tokenizer) >= old_vocab + 4  # <video>, <image>, chat markers added
    torch.testing.assert_close(embeddings[:old_vocab], lm.model.embed_tokens.weight)
    torch.testing.assert_close(model.model.language_model.layers[0].mlp.up_proj.weight, lm.model.layers[0].mlp.up_proj.weight)
    assert processor.tokenizer.convert_tokens_to_ids("<video>") == model.config.video_token_id >= old_vocab
    expected_mean = [0.5] * 3 if "siglip" in vision else pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert list(processor.video_processor.image_mean) == expected_mean
    video = np.random.default_rng(0).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)
    inputs = processor(text="<video> what happens in the video ?", videos=[video], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))


def test_built_model_saves_and_reloads(parts, tmp_path):
    model, processor = StormForConditionalGeneration.from_vision_text_pretrained(
        parts / "siglip-vision", parts / "qwen2", return_processor=True)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)
    card = model.model_card("me/storm-small")
    assert str(parts / "siglip-vision") in card and str(parts / "qwen2") in card
    assert StormProcessor.from_pretrained(tmp_path).num_visual_tokens(8) == model.config.num_visual_tokens(8)
    # The chat template's turn markers were added, and generation stops at the end of a turn.
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") != tokenizer.unk_token_id and end != tokenizer.unk_token_id
    expected = end if tokenizer.eos_token_id in (None, end) else [end, tokenizer.eos_token_id]
    assert loaded.generation_config.eos_token_id == expected  # <|im_end|> first, then the tokenizer's own EOS
    assert loaded.generation_config.pad_token_id == tokenizer.pad_token_id
