"""StormProcessor: placeholder expansion that matches the model, chat template, batching, save/load."""

import typing

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor, StormVideoProcessor

from .tokenizer_factory import tiny_tokenizer
from .url_server import serving
from .video_factory import make_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(make_video(tmp_path_factory.mktemp("proc") / "clip.mp4", num_frames=30))


def make(config=None, **video_kwargs):
    config = config or StormConfig.from_preset("tiny")
    tokenizer = tiny_tokenizer()
    config.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    video_processor = StormVideoProcessor(size={"height": 32, "width": 32}, **video_kwargs)
    return config, StormProcessor.from_config(config, video_processor, tokenizer)


@pytest.mark.parametrize("k,p,s", [(4, 1, 1), (2, 2, 1), (1, 1, 2), (3, 1, 2)])
def test_expansion_matches_the_model_in_a_mixed_batch(clip, k, p, s):
    config, processor = make(StormConfig.from_preset("tiny", temporal_pool_k=k, spatial_pool_p=p, temporal_sample_s=s),
                             num_frames=7)
    arrays = np.random.default_rng(0).integers(0, 255, (5, 20, 24, 3), dtype=np.uint8)
    inputs = processor(text=["<video> what happens ?", "describe <video> and <video> .", "yes no"],
                       videos=[clip, arrays, clip], return_tensors="pt")
    counts = inputs["video_num_frames"].tolist()
    assert counts == [7, 5, 7]
    placeholders = (inputs["input_ids"] == config.video_token_id).sum(1).tolist()
    assert placeholders == [config.num_visual_tokens(7), config.num_visual_tokens(5) + config.num_visual_tokens(7), 0]
    model = StormForConditionalGeneration(config).eval()
    out = model(**inputs)  # no placeholder/feature mismatch
    assert out.logits.shape[:2] == inputs["input_ids"].shape


def test_from_config_sizes_frames_for_the_image_encoder():
    config = StormConfig.from_preset("tiny")
    processor = StormProcessor.from_config(config, tokenizer=tiny_tokenizer())
    assert processor.video_processor.size == {"height": 32, "width": 32}
    with pytest.raises(ValueError, match="takes 32 x 32 frames"):
        StormProcessor.from_config(config, StormVideoProcessor(), tiny_tokenizer())
    with pytest.raises(ValueError, match="maps <video> to id 511, but the model expects 4"):
        StormProcessor.from_config(StormConfig.from_preset("tiny", video_token_id=4), tokenizer=tiny_tokenizer())


def test_placeholder_and_video_counts_must_agree(clip):
    _, processor = make()
    with pytest.raises(ValueError, match="1 <video> placeholders but 2 videos"):
        processor(text="<video> what", videos=[clip, clip])


def test_chat_template_and_tokenized_dict(clip):
    config, processor = make(num_frames=4)
    conversation = [
        {"role": "user", "content": [{"type": "video", "path": clip}, {"type": "text", "text": "what happens ?"}]},
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n<video>what happens ?<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert inputs["pixel_values_videos"].shape == (1, 4, 3, 32, 32)
    assert (inputs["input_ids"] == config.video_token_id).sum() == config.num_visual_tokens(4)
    array_conversation = [
        {"role": "user", "content": [{"type": "video", "video": np.zeros((3, 8, 8, 3), np.uint8)},
                                     {"type": "text", "text": "describe it"}]},
    ]
    batch = processor.apply_chat_template([conversation, array_conversation], tokenize=True, return_dict=True,
                                          return_tensors="pt", padding=True)
    assert batch["input_ids"].shape[0] == 2 and batch["video_num_frames"].tolist() == [4, 3]


def test_save_and_load_with_auto_processor(tmp_path):
    config, processor = make(StormConfig.from_preset("tiny", temporal_pool_k=2), num_frames=9)
    processor.save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, StormProcessor)
    assert (loaded.temporal_pool_k, loaded.grid_size, loaded.video_processor.num_frames) == (2, 4, 9)
    assert loaded.num_visual_tokens(9) == config.num_visual_tokens(9)
    assert loaded.chat_template == processor.chat_template


def test_token_budget_picks_the_frame_count(clip):
    config, processor = make(StormConfig.from_preset("tiny", temporal_pool_k=2), num_frames=16)
    assert processor.frames_for_budget(64, 16) == 8  # 8 frames -> 4 pooled x 16 tokens = 64
    assert processor.frames_for_budget(70, 16) == 8
    assert processor.frames_for_budget(10_000, 16) == 16
    inputs = processor(text="<video> what", videos=[clip], max_visual_tokens=64)
    assert inputs["video_num_frames"].tolist() == [8]
    assert (torch.as_tensor(inputs["input_ids"]) == config.video_token_id).sum() == 64
    by_fps = processor(text="<video> what", videos=[clip], fps=24, max_visual_tokens=32)
    assert by_fps["video_num_frames"].tolist() == [4]
    with pytest.raises(ValueError, match="smaller than one frame"):
        processor(text="<video> what", videos=[clip], max_visual_tokens=8)


def test_images_are_one_frame_clips_end_to_end(clip, tmp_path):
    from PIL import Image

    config, processor = make(num_frames=5)
    picture = tmp_path / "square.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(picture)
    conversation = [{"role": "user", "content": [
        {"type": "image", "path": str(picture)}, {"type": "video", "path": clip},
        {"type": "text", "text": "what happens ?"}]}]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    ids = inputs["input_ids"]
    assert (ids == config.image_token_id).sum() == config.num_visual_tokens(1)
    assert (ids == config.video_token_id).sum() == config.num_visual_tokens(5)
    model = StormForConditionalGeneration(config).eval()
    assert model(**inputs).logits.shape[:2] == ids.shape
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        processor(text="<image> a", images=[np.zeros((4, 4, 3), np.uint8)] * 2)


def test_unknown_arguments_raise_with_the_accepted_names(clip):
    _, processor = make(num_frames=5)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) nframes\. Accepted: the video settings .*num_frames"):
        processor(text="<video> what", videos=[clip], nframes=8)
    with pytest.raises(ValueError, match="unknown argument"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video", "path": clip}]}],
                                      tokenize=True, return_dict=True, processor_kwargs={"fsp": 1})
    ok = processor(text="<video> what", videos=[clip], num_frames=4, truncation=False, padding_side="left")
    assert ok["video_num_frames"].tolist() == [4]  # real video and tokenizer settings still pass


def test_chat_videos_given_by_http_and_file_urls(clip, monkeypatch):
    from pathlib import Path

    from storm_hf import VideoReadError

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # the local server is reached directly
    config, processor = make(num_frames=4)

    def ask(video_item):
        conversation = [{"role": "user", "content": [video_item, {"type": "text", "text": "what happens ?"}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                             return_dict=True, return_tensors="pt")

    local = ask({"type": "video", "path": clip})
    with serving({"/v/clip.mp4": open(clip, "rb").read()}) as base:
        for item in ({"type": "video", "url": base + "/v/clip.mp4"}, {"type": "video", "video": base + "/v/clip.mp4"},
                     {"type": "video", "url": Path(clip).as_uri()}):
            inputs = ask(item)
            assert torch.equal(inputs["pixel_values_videos"], local["pixel_values_videos"]), item
            assert torch.equal(inputs["input_ids"], local["input_ids"])
        with pytest.raises(VideoReadError, match=f"{base}/v/gone.mp4: the server answered 404 Not Found"):
            ask({"type": "video", "url": base + "/v/gone.mp4"})
        # the processor itself, and a video of the batch given by URL
        batch = processor(text=["<video> what", "<video> what"], videos=[clip, base + "/v/clip.mp4"])
        assert batch["video_num_frames"].tolist() == [4, 4]
    with pytest.raises(VideoReadError, match="ftp://host/clip.mp4: ftp: URLs are not supported"):
        ask({"type": "video", "url": "ftp://host/clip.mp4"})


@pytest.mark.parametrize("text, which", [("", "text"), ("   \n", "text"), (["<video> what", " "], r"text\[1\]")])
def test_an_empty_prompt_is_refused(clip, text, which):
    _, processor = make(num_frames=4)
    videos = [clip] * sum(t.count("<video>") for t in ([text] if isinstance(text, str) else text))
    with pytest.raises(ValueError, match=rf"StormProcessor: {which} is empty; give the prompt"):
        processor(text=text, videos=videos or None)


def test_a_user_turn_with_a_blank_question_is_refused_a_video_only_turn_is_not(clip):
    config, processor = make(num_frames=4)
    for blank in ("", "  "):
        conversation = [{"role": "user", "content": [{"type": "video", "path": clip}, {"type": "text", "text": blank}]}]
        with pytest.raises(ValueError, match="the user's text in message 0 is empty; give the question"):
            processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        with pytest.raises(ValueError, match="message 1 is empty"):
            processor.apply_chat_template([{"role": "system", "content": ""}, {"role": "user", "content": blank}])
        batch = [[{"role": "user", "content": "what ?"}], [{"role": "user", "content": blank}]]
        with pytest.raises(ValueError, match="conversation 1, message 0 is empty"):
            processor.apply_chat_template(batch)
    video_only = [{"role": "user", "content": [{"type": "video", "path": clip}]}]
    inputs = processor.apply_chat_template(video_only, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert sum(i == config.video_token_id for i in inputs["input_ids"][0]) == config.num_visual_tokens(4)
    assert processor(text="<video>", videos=[clip])["video_num_frames"].tolist() == [4]  # a placeholder alone is a prompt


@pytest.mark.parametrize("setting", [{"num_frames": 2.5}, {"num_frames": 0}, {"num_frames": -2}, {"num_frames": True},
                                     {"fps": 0.0, "num_frames": None}, {"fps": float("inf"), "num_frames": None}])
def test_bad_sampling_settings_are_named_before_any_file_is_read(setting, tmp_path):
    _, processor = make(num_frames=4)
    name, value = next((k, v) for k, v in setting.items() if v is not None)
    missing = str(tmp_path / "not-read.mp4")  # never opened: the setting is refused first
    for budget in (None, 10_000):  # the frame budget must not round 2.5 down to 2 silently
        with pytest.raises(ValueError, match=rf"StormProcessor: {name} must be .*; got {value!r}\.$"):
            processor(text="<video> what", videos=[missing], max_visual_tokens=budget, **setting)


@pytest.mark.parametrize("k,p,s", [(4, 1, 1), (2, 2, 2)])
def test_token_counts_by_size_and_replacement_offsets_agree_with_the_call(clip, k, p, s):
    # What vLLM's Transformers backend asks: the placeholder count per video from its size alone
    # (`_get_num_multimodal_tokens`), and where each placeholder went (`text_replacement_offsets`).
    config, processor = make(StormConfig.from_preset("tiny", temporal_pool_k=k, spatial_pool_p=p, temporal_sample_s=s),
                             num_frames=7)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (n, 20, 24, 3), dtype=np.uint8) for n in (30, 5, 1)]
    image = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    texts = ["<video> what happens ? <image>", "describe <video> and <video> ."]
    for settings in ({}, {"num_frames": 3}, {"do_sample_frames": False}, {"num_frames": 12, "max_frames": 4}):
        inputs = processor(text=texts, videos=videos, images=[image], return_text_replacement_offsets=True, **settings)
        counted = processor._get_num_multimodal_tokens(video_sizes=[v.shape[:3] for v in videos],
                                                       image_sizes=[image.shape[:2]], **settings)
        assert counted.num_video_tokens == [config.num_visual_tokens(n) for n in inputs["video_num_frames"].tolist()]
        assert counted.num_image_tokens == [config.num_visual_tokens(1)]
        offsets = inputs["text_replacement_offsets"]
        assert [[o["type"] for o in row] for row in offsets] == [["video", "image"], ["video", "video"]]
        for text, row in zip(texts, offsets):
            for o in row:
                assert text[o["span"][0]:o["span"][1]] == o["text"] == f"<{o['type']}>"
                assert o["new_span"][1] - o["new_span"][0] == len(o["replacement"])
        tokens = [o["replacement"].count(o["text"]) for row in offsets for o in row if o["type"] == "video"]
        assert tokens == counted.num_video_tokens
        assert processor.replace_video_token(inputs, 1) == "<video>" * counted.num_video_tokens[1]
        assert processor.replace_image_token(inputs, 0) == "<image>" * config.num_visual_tokens(1)
        assert "text_replacement_offsets" not in processor(text=texts, videos=videos, images=[image], **settings)


def test_the_reduction_in_a_call_may_restate_the_processors_only_and_the_model_checks_placeholder_counts():
    # vLLM hands mm_processor_kwargs (the engine's and each request's) to processor calls: a k / p / s other than
    # the model's would expand placeholders the features do not fill. With the placeholder counts handed back
    # (return_text_replacement_offsets=True), the model refuses features of another length.
    config, processor = make(StormConfig.from_preset("tiny", temporal_pool_k=2), num_frames=4)
    video = np.random.default_rng(0).integers(0, 255, (4, 20, 24, 3), dtype=np.uint8)
    same = processor(text="<video> what", videos=[video], temporal_pool_k=2, spatial_pool_p=1,
                     return_text_replacement_offsets=True, return_tensors="pt")
    assert same["video_num_tokens"].tolist() == [config.num_visual_tokens(4)]
    for setting in ({"temporal_pool_k": 4}, {"spatial_pool_p": 2}, {"temporal_sample_s": 2}):
        name, value = next(iter(setting.items()))
        with pytest.raises(ValueError, match=rf"{name}={value} in the call, but this processor counts placeholders"):
            processor(text="<video> what", videos=[video], **setting)
        with pytest.raises(ValueError, match=rf"{name}={value} in the call"):
            processor._get_num_multimodal_tokens(video_sizes=[(4, 20, 24)], **setting)
    # declared as call settings, so that vLLM does not build a processor with them (see StormProcessorKwargs)
    videos_kwargs = typing.get_type_hints(processor.valid_processor_kwargs)["videos_kwargs"]
    assert {"temporal_pool_k", "spatial_pool_p", "temporal_sample_s", "num_frames"} <= set(videos_kwargs.__annotations__)

    model = StormForConditionalGeneration(config).eval()
    with torch.no_grad():
        features = model.get_video_features(same["pixel_values_videos"], same["video_num_frames"],
                                            video_num_tokens=same["video_num_tokens"])
        assert [f.shape[0] for f in features.pooler_output] == same["video_num_tokens"].tolist()
        with pytest.raises(ValueError, match=r"gave the videos \[8\] placeholder tokens but the model produces \[32\]"
                                             r".*temporal_pool_k=2"):
            model.get_video_features(same["pixel_values_videos"], same["video_num_frames"], video_num_tokens=[8])
        image = torch.zeros(1, 3, 32, 32)
        model.get_image_features(image, image_num_tokens=[config.num_visual_tokens(1)])
        with pytest.raises(ValueError, match="gave the images"):
            model.get_image_features(image, image_num_tokens=[config.num_visual_tokens(1) + 1])


def test_the_image_processor_is_a_view_of_the_video_processor_with_the_image_output_names(clip):
    _, processor = make()
    view = processor.image_processor
    assert view.size == processor.video_processor.size and view.image_mean == processor.video_processor.image_mean
    assert view.model_input_names == ["pixel_values", "image_num_tokens"]
    image = np.zeros((20, 24, 3), np.uint8)
    out = processor(text="<image> what", images=[image], return_text_replacement_offsets=True)
    assert set(view.model_input_names) <= set(out)
    assert "video_num_tokens" in processor.video_processor.model_input_names
