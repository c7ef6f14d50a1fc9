"""storm_hf.miniature: the benchmark's model layout and arms, initial checkpoints for `storm-hf train`, and
taking a pretrained image model's weights into a layout with a fresh temporal encoder."""

import pytest
import torch

from storm_hf import StormForConditionalGeneration, StormProcessor
from storm_hf.miniature import (
    ARMS, POSITION_EMBEDDING_STD, build_initial_checkpoint, mini_config, mini_tokenizer, new_model,
)


def test_arms_differ_only_in_the_temporal_encoder():
    configs = {arm: mini_config(arm, temporal_pool_k=4) for arm in ARMS}
    assert configs["baseline"].temporal_num_layers == 0
    assert configs["storm"].temporal_bidirectional and not configs["storm-forward"].temporal_bidirectional
    counts = {arm: sum(p.numel() for p in new_model(c).model.temporal_encoder.parameters()) for arm, c in configs.items()}
    assert counts["baseline"] == 0 < counts["storm-forward"] < counts["storm"]
    assert mini_config("storm", 1, 2).num_visual_tokens(16) == mini_config("storm", 4, 1).num_visual_tokens(16) == 64
    with pytest.raises(ValueError, match="Unknown arm 'vila'"):
        mini_config("vila")


def test_new_models_are_seeded_and_their_image_encoder_knows_where_a_patch_is():
    config = mini_config("storm")
    a, b = new_model(config, seed=3), new_model(config, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    position = a.model.vision_tower.embeddings.position_embedding.weight
    assert position.std().item() == pytest.approx(POSITION_EMBEDDING_STD, rel=0.1)


def test_initial_checkpoint_loads_and_takes_all_but_the_temporal_encoder(tmp_path):
    base = build_initial_checkpoint(tmp_path / "base", mini_config("baseline", 1), seed=1)
    storm = build_initial_checkpoint(tmp_path / "storm", mini_config("storm", 4), seed=2, weights_from=base)
    loaded_base = StormForConditionalGeneration.from_pretrained(base)
    loaded = StormForConditionalGeneration.from_pretrained(storm)
    processor = StormProcessor.from_pretrained(storm)
    assert processor.temporal_pool_k == 4 and processor.video_processor.num_frames == 16
    assert processor.tokenizer.convert_tokens_to_ids("<video>") == loaded.config.video_token_id
    base_weights = loaded_base.state_dict()
    for name, tensor in loaded.state_dict().items():
        if not name.startswith("model.temporal_encoder."):
            assert torch.equal(tensor, base_weights[name]), name
    fresh = new_model(mini_config("storm", 4), seed=2).state_dict()
    assert torch.equal(loaded.state_dict()["model.temporal_encoder.layers.0.forward_mixer.in_proj.weight"],
                       fresh["model.temporal_encoder.layers.0.forward_mixer.in_proj.weight"])
    assert loaded.generation_config.eos_token_id == mini_tokenizer().convert_tokens_to_ids("<|im_end|>")


def test_weights_from_another_layout_are_refused_by_name(tmp_path):
    wide = mini_config("baseline", 1, text_config={**mini_config().text_config.to_dict(), "hidden_size": 32,
                                                   "num_attention_heads": 2, "num_key_value_heads": 1})
    other = build_initial_checkpoint(tmp_path / "wide", wide)
    with pytest.raises(ValueError, match=r"wide: its weights do not fit this layout \(shape mismatches: .*embed_tokens"):
        build_initial_checkpoint(tmp_path / "x", mini_config("storm"), weights_from=other)
    with pytest.raises(ValueError, match="no model.safetensors"):
        build_initial_checkpoint(tmp_path / "y", mini_config("storm"), weights_from=tmp_path)


def test_a_new_temporal_encoder_starts_as_the_identity_so_every_arm_starts_as_the_pretrained_model(tmp_path):
    base = build_initial_checkpoint(tmp_path / "base", mini_config("baseline", 1), seed=1)
    frames = torch.randn(1, 16, 3, 48, 48)
    reference = StormForConditionalGeneration.from_pretrained(base).eval().model.get_video_features(frames)
    for arm, merge in (("storm", "add"), ("storm-forward", "add"), ("storm", "concat")):
        config = mini_config(arm, 1, temporal_direction_merge=merge)
        folder = build_initial_checkpoint(tmp_path / f"{arm}-{merge}", config, seed=2, weights_from=base)
        model = StormForConditionalGeneration.from_pretrained(folder).eval()
        features = model.model.get_video_features(frames)
        assert torch.allclose(features.pooler_output[0], reference.pooler_output[0], atol=1e-6), (arm, merge)
        loss = model(input_ids=torch.tensor([[5] + [model.config.video_token_id] * 256 + [6]]),
                     pixel_values_videos=frames, labels=torch.tensor([[5] + [-100] * 256 + [6]])).loss
        loss.backward()  # the zeroed projections still learn (the layers' last ones; concat: the merge Linear)
        zeroed = "merge_proj" if merge == "concat" else "out_proj"
        grads = [p.grad for n, p in model.model.temporal_encoder.named_parameters() if zeroed in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    unchanged = build_initial_checkpoint(tmp_path / "random", mini_config("storm", 1), seed=2, weights_from=base,
                                         zero_new_residuals=False)
    features = StormForConditionalGeneration.from_pretrained(unchanged).eval().model.get_video_features(frames)
    assert not torch.allclose(features.pooler_output[0], reference.pooler_output[0], atol=1e-3)
