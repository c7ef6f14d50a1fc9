"""StormProcessor: placeholder expansion that matches the model, chat template, batching, save/load."""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from storm_hf import StormConfig, StormForConditionalGeneration, StormProcessor, StormVideoProcessor

from .tokenizer_factory import tiny_tokenizer
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
