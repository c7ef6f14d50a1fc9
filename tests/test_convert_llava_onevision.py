"""Converting a (tiny, locally made) LLaVA-OneVision checkpoint to STORM through the command line."""

import subprocess
import sys

import numpy as np
import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from storm_hf import StormForConditionalGeneration, StormProcessor
from storm_hf.integrations.convert_llava_onevision import interpolate_position_embeddings

from .tokenizer_factory import tiny_tokenizer


def test_position_embedding_interpolation_keeps_a_constant_field():
    constant = torch.ones(49, 8) * 3.0
    assert torch.allclose(interpolate_position_embeddings(constant, 8), torch.ones(64, 8) * 3.0)
    same = torch.randn(64, 8)
    assert interpolate_position_embeddings(same, 8) is same


def save_tiny_llava(folder, vision_layers=2, text_layers=2, image_size=28, **extra):
    """A random-weight LLaVA-OneVision (SigLIP + Qwen2, width 32) and the tiny tokenizer, saved to `folder`."""
    tokenizer = tiny_tokenizer()
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
                           patch_size=4),
        text_config=dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"), **extra,
    )
    torch.manual_seed(0)
    llava = LlavaOnevisionForConditionalGeneration(config).eval()
    llava.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return llava, tokenizer


def test_convert_keeps_encoder_and_llm(tmp_path):
    llava, _ = save_tiny_llava(tmp_path / "llava")
    result = subprocess.run([sys.executable, "-m", "storm_hf.integrations.convert_llava_onevision", str(tmp_path / "llava"),
                             str(tmp_path / "storm"), "--image-size", "32", "--temporal-pool-k", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    storm = StormForConditionalGeneration.from_pretrained(tmp_path / "storm").eval()
    processor = StormProcessor.from_pretrained(tmp_path / "storm")
    assert storm.config.vision_config.image_size == 32 and storm.config.temporal_pool_k == 2
    for name, tensor in llava.model.language_model.state_dict().items():
        torch.testing.assert_close(storm.model.language_model.state_dict()[name], tensor, msg=name)
    torch.testing.assert_close(storm.lm_head.weight, llava.lm_head.weight)
    vision = storm.model.vision_tower.state_dict()
    for name, tensor in llava.model.vision_tower.state_dict().items():
        if "position" in name:
            continue
        torch.testing.assert_close(vision[name], tensor, msg=name)
    assert vision["embeddings.position_embedding.weight"].shape == (64, 32)  # 7x7 grid -> 8x8
    video = np.random.default_rng(0).integers(0, 255, (4, 40, 40, 3), dtype=np.uint8)
    inputs = processor(text="<video> what happens ?", videos=[video], return_tensors="pt")
    with torch.no_grad():
        assert storm(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_converted_model_stops_at_the_end_of_a_chat_turn(tmp_path):
    import json

    from storm_hf.integrations.convert_llava_onevision import convert_llava_onevision_to_storm

    _, tokenizer = save_tiny_llava(tmp_path / "llava", vision_layers=1, text_layers=1)
    convert_llava_onevision_to_storm(tmp_path / "llava", tmp_path / "storm", image_size=32)
    saved = json.loads((tmp_path / "storm" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert saved["pad_token_id"] == tokenizer.pad_token_id


def test_converter_refuses_what_is_not_llava_onevision(tmp_path):
    from storm_hf import StormConfig

    StormForConditionalGeneration(StormConfig.from_preset("tiny")).save_pretrained(tmp_path / "storm")
    (tmp_path / "empty").mkdir()
    for source, reason in ((tmp_path / "storm", "model_type 'storm', expected 'llava_onevision'"),
                           (tmp_path / "empty", "no readable config.json")):
        result = subprocess.run([sys.executable, "-m", "storm_hf.integrations.convert_llava_onevision", str(source),
                                 str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "not a LLaVA-OneVision checkpoint" in result.stderr and reason in result.stderr
        assert "Traceback" not in result.stderr and "saved" not in result.stdout
        assert not (tmp_path / "out").exists()


def test_converted_model_sees_llava_onevision_vision_features(tmp_path):
    """vision_feature_layer=-1 in LLaVA-OneVision is hidden_states[-1] (before SigLIP's post-LayerNorm); the
    converted STORM reads the same tensor on the same frames (a 32 px tower needs no interpolation)."""
    from storm_hf.integrations.convert_llava_onevision import convert_llava_onevision_to_storm

    llava, _ = save_tiny_llava(tmp_path / "llava", text_layers=1, image_size=32, vision_feature_layer=-1,
                               vision_feature_select_strategy="full")
    storm, _ = convert_llava_onevision_to_storm(tmp_path / "llava", image_size=32)
    frames = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        theirs = llava.model.vision_tower(frames, output_hidden_states=True).hidden_states[-1]
        ours = storm.model.select_patch_features(storm.model.run_vision_tower(frames))
        after_norm = storm.model.vision_tower(frames).last_hidden_state
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, after_norm)  # the post-LayerNorm output would be a different feature
