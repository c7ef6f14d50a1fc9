"""StormModel / StormForConditionalGeneration on the tiny preset."""

import pytest
import torch
from transformers import AutoModel, AutoModelForImageTextToText

from storm_hf import StormForConditionalGeneration, StormModel

from .conftest import tiny_config, tiny_model, video_prompt


def frames(n, batch=1):
    return torch.randn(batch, n, 3, 32, 32)


def test_forward_shapes_loss_and_feature_counts():
    model = tiny_model()
    config = model.config
    input_ids = video_prompt(config, [6])
    labels = input_ids.clone()
    labels[input_ids == config.video_token_id] = -100
    out = model(input_ids=input_ids, pixel_values_videos=frames(6), labels=labels)
    assert out.logits.shape == (1, input_ids.shape[1], config.text_config.vocab_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert [f.shape for f in out.video_outputs.pooler_output] == [(config.num_visual_tokens(6), 32)]


@pytest.mark.parametrize("k,p,s", [(1, 1, 1), (4, 1, 1), (2, 2, 1), (1, 1, 2), (4, 2, 2), (3, 3, 3)])
@pytest.mark.parametrize("num_frames", [1, 5, 8])
def test_every_reduction_setting_fills_exactly_its_placeholders(k, p, s, num_frames):
    model = tiny_model(temporal_pool_k=k, spatial_pool_p=p, temporal_sample_s=s)
    features = model.get_video_features(frames(num_frames)).pooler_output
    assert features[0].shape[0] == model.config.num_visual_tokens(num_frames)
    out = model(input_ids=video_prompt(model.config, [num_frames]), pixel_values_videos=frames(num_frames))
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("feature_layer", [None, -2])
def test_image_encoder_micro_batches_change_nothing_but_peak_memory(feature_layer):
    """vision_frames_per_batch splits the frames for the image encoder only: features, hidden states and
    attentions over two videos (7 and 5 frames) are the same with micro-batches of 3, 7 or all frames."""
    video = frames(7, batch=2)
    counts = torch.tensor([7, 5])
    results = {}
    for per_batch in (None, 3, 7):
        model = tiny_model(vision_frames_per_batch=per_batch, vision_feature_layer=feature_layer)
        with torch.no_grad():
            out = model.get_video_features(video, video_num_frames=counts, output_hidden_states=True,
                                           output_attentions=True)
            plain = model.get_video_features(video, video_num_frames=counts)
            stage = model.model.vision_patch_features(video[0])
        assert out.last_hidden_state.shape[0] == 12 and len(out.hidden_states) > 1
        assert all(h.shape[0] == 12 for h in out.hidden_states + out.attentions)  # attentions: () under sdpa
        assert plain.hidden_states is None  # not kept for every frame unless asked
        results[per_batch] = (out, plain, stage)
    reference, reference_plain, reference_stage = results[None]
    for out, plain, stage in (results[3], results[7]):
        for a, b in zip(out.pooler_output + plain.pooler_output, reference.pooler_output + reference_plain.pooler_output):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(out.last_hidden_state, reference.last_hidden_state)
        assert len(out.attentions) == len(reference.attentions)
        for a, b in zip(out.hidden_states + out.attentions, reference.hidden_states + reference.attentions):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(stage, reference_stage)
    with pytest.raises(ValueError, match="vision_frames_per_batch must be a positive integer or None"):
        tiny_config(vision_frames_per_batch=0)


def test_image_encoder_micro_batches_give_the_same_gradients():
    video = frames(5)
    grads = []
    for per_batch in (None, 2):
        model = tiny_model(vision_frames_per_batch=per_batch).train()
        ids = video_prompt(model.config, [5])
        model(input_ids=ids, pixel_values_videos=video, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("vision_tower" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_image_path_is_a_one_frame_clip():
    model = tiny_model()
    image = torch.randn(2, 3, 32, 32)
    image_features = model.get_image_features(image).pooler_output
    video_features = model.get_video_features(image.unsqueeze(1)).pooler_output
    for a, b in zip(image_features, video_features):
        torch.testing.assert_close(a, b)
    n = model.config.num_visual_tokens(1)
    ids = torch.tensor([[1] + [model.config.image_token_id] * n + [2] + [model.config.image_token_id] * n + [3]])
    assert model(input_ids=ids, pixel_values=image).logits.shape[1] == ids.shape[1]


def test_placeholder_count_mismatch_names_both_counts():
    model = tiny_model()
    n = model.config.num_visual_tokens(6)
    ids = video_prompt(model.config, [6])[:, :-3]  # drop one placeholder... and the text after it
    ids = torch.cat([ids[:, :2], ids[:, 3:]], dim=1)
    with pytest.raises(ValueError, match=rf"{n - 1} video tokens .* produce {n} features"):
        model(input_ids=ids, pixel_values_videos=frames(6))
    with pytest.raises(ValueError, match="image"):
        model(input_ids=torch.tensor([[1, model.config.image_token_id, 2]]), pixel_values=torch.randn(1, 3, 32, 32))


def test_bad_shapes_raise_clear_errors():
    model = tiny_model()
    ids = video_prompt(model.config, [4])
    with pytest.raises(ValueError, match="pixel_values_videos must have shape"):
        model(input_ids=ids, pixel_values_videos=torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(input_ids=ids, pixel_values=torch.randn(1, 1, 3, 32, 32))
    with pytest.raises(ValueError, match="video_num_frames"):
        model(input_ids=ids, pixel_values_videos=frames(4), video_num_frames=torch.tensor([5]))
    with pytest.raises(ValueError, match=r"Frames must be 3 x 32 x 32 .* got \(3, 48, 48\)"):
        model(input_ids=ids, pixel_values_videos=torch.randn(1, 4, 3, 48, 48))
    with pytest.raises(ValueError, match="got \\(4, 32, 32\\)"):
        model(input_ids=ids, pixel_values_videos=torch.randn(1, 4, 4, 32, 32))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(pixel_values_videos=frames(4))


def test_mixed_batch_equals_per_sample_runs():
    """Videos of different lengths, an image and a text-only row in one right-padded batch."""
    model = tiny_model()
    c = model.config
    n_img = c.num_visual_tokens(1)
    rows = [
        (video_prompt(c, [8])[0].tolist(), {"videos": [frames(8)[0]]}),
        ([1] + [c.image_token_id] * n_img + video_prompt(c, [3])[0].tolist(), {"images": [torch.randn(3, 32, 32)], "videos": [frames(3)[0]]}),
        ([1, 7, 8, 9, 10], {}),
        (video_prompt(c, [5, 2])[0].tolist(), {"videos": [frames(5)[0], frames(2)[0]]}),
    ]
    singles = []
    for ids, media in rows:
        kwargs = {}
        if "videos" in media:
            kwargs["pixel_values_videos"] = torch.nn.utils.rnn.pad_sequence(media["videos"], batch_first=True)
            kwargs["video_num_frames"] = torch.tensor([v.shape[0] for v in media["videos"]])
        if "images" in media:
            kwargs["pixel_values"] = torch.stack(media["images"])
        singles.append(model(input_ids=torch.tensor([ids]), **kwargs).logits[0])

    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
    videos = [v for _, media in rows for v in media.get("videos", [])]
    images = [im for _, media in rows for im in media.get("images", [])]
    batch = model(
        input_ids=input_ids, attention_mask=attention_mask,
        pixel_values_videos=torch.nn.utils.rnn.pad_sequence(videos, batch_first=True),
        video_num_frames=torch.tensor([v.shape[0] for v in videos]),
        pixel_values=torch.stack(images),
    ).logits
    for i, (ids, _) in enumerate(rows):
        torch.testing.assert_close(batch[i, : len(ids)], singles[i], rtol=1e-4, atol=1e-4)


def test_generate_with_and_without_cache_gives_the_same_tokens():
    model = tiny_model()
    ids = video_prompt(model.config, [8])
    video = frames(8)
    cached = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape == (1, ids.shape[1] + 12)
    assert torch.equal(cached, uncached)


def test_generate_encodes_frames_once_per_call():
    model = tiny_model()
    calls = {"vision": 0, "temporal": 0}
    model.model.vision_tower.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))
    model.model.temporal_encoder.register_forward_hook(lambda *a: calls.__setitem__("temporal", calls["temporal"] + 1))
    ids = video_prompt(model.config, [4, 6])
    video = torch.nn.utils.rnn.pad_sequence([frames(4)[0], frames(6)[0]], batch_first=True)
    model.generate(input_ids=ids, pixel_values_videos=video, video_num_frames=torch.tensor([4, 6]),
                   max_new_tokens=6, do_sample=False)
    assert calls == {"vision": 1, "temporal": 2}  # one tower call; one encoder call per distinct length


def test_batched_generate_with_left_padding_matches_single_rows():
    model = tiny_model()
    c = model.config
    prompts = [video_prompt(c, [4])[0], video_prompt(c, [8], suffix=(3, 4, 6, 7))[0]]
    videos = [frames(4)[0], frames(8)[0]]
    single = [
        model.generate(input_ids=p[None], pixel_values_videos=v[None], max_new_tokens=5, do_sample=False)[0, len(p):]
        for p, v in zip(prompts, videos)
    ]
    length = max(len(p) for p in prompts)
    input_ids = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    out = model.generate(
        input_ids=input_ids, attention_mask=mask, pixel_values_videos=torch.nn.utils.rnn.pad_sequence(videos, batch_first=True),
        video_num_frames=torch.tensor([4, 8]), max_new_tokens=5, do_sample=False, pad_token_id=0,
    )
    for i in range(2):
        assert out[i, length:].tolist() == single[i].tolist()


def test_auto_classes_and_bfloat16_load(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tmp_path), StormForConditionalGeneration)
    assert isinstance(AutoModel.from_config(model.config), StormModel)

    bf16 = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert bf16.lm_head.weight.dtype == torch.bfloat16
    mixer = bf16.model.temporal_encoder.layers[0].forward_mixer
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    assert mixer.A_log.dtype == torch.float32 and mixer.D.dtype == torch.float32  # as in mamba_ssm
    ids = video_prompt(model.config, [4])
    video = frames(4)
    logits16 = bf16(input_ids=ids, pixel_values_videos=video).logits
    logits32 = model(input_ids=ids, pixel_values_videos=video).logits
    assert logits16.dtype == torch.bfloat16
    assert (logits16.float() - logits32).abs().max() < 0.1 * logits32.abs().max()
    generated = bf16.generate(input_ids=ids, pixel_values_videos=video.bfloat16(), max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4


def test_loaded_weights_are_not_reinitialised(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.model.temporal_encoder.layers[0].forward_mixer.A_log.add_(0.5)
        model.model.temporal_encoder.layers[0].forward_mixer.dt_proj.bias.fill_(-3.0)
    model.save_pretrained(tmp_path)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(bidirectional):
    def grads(checkpointing):
        model = tiny_model(temporal_bidirectional=bidirectional).train()
        if checkpointing:
            model.activation_checkpointing_enable()  # 5.24's name for gradient_checkpointing_enable
            assert model.model.temporal_encoder.layers[0].gradient_checkpointing
        ids = video_prompt(model.config, [4])
        torch.manual_seed(1)
        loss = model(input_ids=ids, pixel_values_videos=frames(4), labels=ids).loss
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    assert any("temporal_encoder" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_text_only_forward_and_config_variants():
    model = tiny_model(temporal_direction_merge="concat", temporal_final_norm=False, vision_feature_layer=-2)
    assert model.model.temporal_encoder.norm is None
    assert model.model.temporal_encoder.layers[0].merge_proj is not None
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, 512)
    assert model.get_video_features(frames(3)).pooler_output[0].shape == (tiny_config().num_visual_tokens(3), 32)


def test_beam_search_and_several_return_sequences_reuse_the_encoded_video():
    model = tiny_model()
    ids = video_prompt(model.config, [4])
    video = frames(4)
    beams = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=4, num_beams=2, do_sample=False)
    assert beams.shape == (1, ids.shape[1] + 4)
    sampled = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=4, do_sample=True,
                             num_return_sequences=3)
    assert sampled.shape == (3, ids.shape[1] + 4)
    assert torch.equal(sampled[:, : ids.shape[1]], ids.expand(3, -1))


def test_generation_stops_at_the_end_of_a_chat_turn(tmp_path):
    """The tiny preset and set_generation_tokens: EOS is <|im_end|>, saved with the model, and generate() stops."""
    from storm_hf import StormForConditionalGeneration as Model
    from storm_hf.miniature.tiny import word_tokenizer

    tokenizer = word_tokenizer(["hello"])
    model = tiny_model()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == end and model.generation_config.pad_token_id == tokenizer.pad_token_id
    model.save_pretrained(tmp_path / "m")
    reloaded = Model.from_pretrained(tmp_path / "m").eval()
    assert reloaded.generation_config.eos_token_id == end
    head = torch.nn.Linear(model.config.text_config.hidden_size, model.config.text_config.vocab_size)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[end] = 1.0  # every next token is <|im_end|>
        reloaded.lm_head = head
        out = reloaded.generate(input_ids=torch.tensor([[2, 3, 4]]), max_new_tokens=8, do_sample=False)
    assert out[0, 3:].tolist() == [end]  # stopped there, not after 8 tokens

    other = word_tokenizer(["x"])
    other.add_special_tokens({"eos_token": "[UNK]"})
    model = tiny_model().set_generation_tokens(other)
    assert model.generation_config.eos_token_id == [end, other.eos_token_id]
    assert model.config.text_config.eos_token_id == [end, other.eos_token_id]
