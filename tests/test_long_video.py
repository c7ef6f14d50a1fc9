"""Long videos chunk by chunk (`StormModel.encode_video`, `StormProcessor.video_chunks`) and live video
(`StormLiveSession`): the same features, prompts and answers as the one-shot path on the same frames."""

import numpy as np
import pytest
import torch

from storm_hf import StormForConditionalGeneration, StormLiveSession, StormProcessor, VideoReadError
from storm_hf.inference import video_question_prompt
from storm_hf.miniature import BUNDLED_MODEL, mini_config
from storm_hf.modeling_storm import StreamingTokenReducer, reduce_visual_tokens

from .video_factory import make_video

LAYOUTS = {
    "bidirectional raster": {},
    "bidirectional alternating, 2 layers, s=2": dict(temporal_scan_order="alternating", temporal_num_layers=2,
                                                     temporal_sample_s=2),
    "vision mamba shared projections, mean": dict(temporal_share_projections=True, temporal_direction_merge="mean"),
    "concat merge, k=3 p=2": dict(temporal_direction_merge="concat", temporal_pool_k=3, spatial_pool_p=2),
    "forward-only": dict(temporal_bidirectional=False),
    "forward-only k=3 p=2 s=2, 2 layers": dict(temporal_bidirectional=False, temporal_pool_k=3, spatial_pool_p=2,
                                               temporal_sample_s=2, temporal_num_layers=2),
    "no temporal encoder": dict(temporal_num_layers=0),
}


@pytest.fixture(scope="module")
def tokenizer():
    return StormProcessor.from_pretrained(BUNDLED_MODEL).tokenizer


def build(tokenizer, **fields):
    """A miniature model with the given layout, its temporal layers' outputs drawn at random (a new encoder's
    out_proj is zero, which would make every layout the identity), and its processor."""
    config = mini_config("storm")
    for name, value in fields.items():
        setattr(config, name, value)
    config.temporal_inference_chunk_tokens = 64  # the chunked bidirectional scan too, at these lengths
    torch.manual_seed(0)
    model = StormForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.model.temporal_encoder.named_parameters():
            if "out_proj" in name or "merge_proj" in name:
                parameter.normal_(0, 0.05)
    model.set_generation_tokens(tokenizer)
    return model, StormProcessor.from_config(config, tokenizer=tokenizer)


def random_frames(count, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (count, 48, 48, 3), dtype=np.uint8)


def one_shot_features(model, processor, frames):
    pixels = processor.video_processor([frames], do_sample_frames=False, return_tensors="pt")
    with torch.no_grad():
        return model.get_video_features(pixels["pixel_values_videos"], pixels["video_num_frames"]).pooler_output[0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_features_equal_the_one_shot_features(tokenizer, layout):
    model, processor = build(tokenizer, **LAYOUTS[layout])
    frames = random_frames(23)
    expected = one_shot_features(model, processor, frames)
    assert model.model.streams_in_time() == (layout.startswith("forward") or layout == "no temporal encoder")
    for chunk_frames in (1, 5, 23):
        chunks = processor.video_chunks(frames, chunk_frames=chunk_frames)  # knows its frame count: one buffer
        features = model.encode_video(chunks, progress=False)
        torch.testing.assert_close(features.pooler_output[0], expected, atol=1e-5, rtol=1e-5)
        assert features.video_num_frames.tolist() == [23]
    # chunks from a generator (frame count unknown in advance) of uneven sizes
    pieces = list(processor.video_chunks(frames, chunk_frames=7))
    features = model.encode_video((p for p in pieces), progress=False)
    torch.testing.assert_close(features.pooler_output[0], expected, atol=1e-5, rtol=1e-5)


def test_the_streaming_reducer_equals_the_one_shot_reduction():
    torch.manual_seed(1)
    encoded = torch.randn(19, 16, 8)  # (frames, 4 x 4 tokens, dim)
    for k, p, s in ((1, 1, 1), (4, 1, 1), (3, 2, 2), (4, 3, 3), (5, 1, 2)):
        reducer = StreamingTokenReducer(4, k, p, s)
        pieces, start = [], 0
        for size in (2, 5, 1, 4, 7):
            pieces.append(reducer.push(encoded[start:start + size]))
            start += size
        peeked = reducer.peek()
        last = reducer.finish()
        assert (peeked is None) == (last is None) == (19 % k == 0)
        streamed = torch.cat(pieces + ([last] if last is not None else []))
        expected = reduce_visual_tokens(encoded[None], 4, k, p, s)[0].flatten(0, 1)
        torch.testing.assert_close(streamed, expected)
        assert reducer.frames == 19


def test_generate_takes_the_chunked_features_with_a_prompt_expanded_for_their_frames(tokenizer, tmp_path):
    model, processor = build(tokenizer, temporal_scan_order="alternating", temporal_num_layers=2)
    path = str(make_video(tmp_path / "clip.mp4", num_frames=40))
    prompt = video_question_prompt(processor, "which colour appears first ?")
    inputs = processor(text=prompt, videos=[path], num_frames=12, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True)
    chunks = processor.video_chunks(path, chunk_frames=5, num_frames=12)
    assert chunks.num_frames == len(chunks) == 12 and len(chunks.timestamps) == 12
    seen = []
    features = model.encode_video(chunks, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(5, 12), (10, 12), (12, 12)]
    text_inputs = processor(text=prompt, video_num_frames=features.video_num_frames, return_tensors="pt")
    assert torch.equal(text_inputs["input_ids"], inputs["input_ids"])
    assert "pixel_values_videos" not in text_inputs
    with torch.no_grad():
        out = model.generate(**text_inputs, mm_encoder_outputs={"video": features}, max_new_tokens=5,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected.sequences)
    for got, want in zip(out.scores, expected.scores):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_video_chunks_sample_and_normalise_as_the_processor_does(tokenizer, tmp_path):
    _, processor = build(tokenizer)
    path = str(make_video(tmp_path / "clip.mp4", num_frames=50, fps=10))
    for sampling in ({"num_frames": 9}, {"fps": 2.0}, {"fps": 4.0, "max_frames": 7}):
        expected = processor.video_processor([path], return_tensors="pt", **sampling)
        chunks = processor.video_chunks(path, chunk_frames=4, **sampling)
        pixels = torch.cat(list(chunks))
        count = int(expected["video_num_frames"][0])
        assert chunks.num_frames == count
        torch.testing.assert_close(pixels, expected["pixel_values_videos"][0, :count])
        assert torch.equal(torch.cat(list(chunks)), pixels)  # iterating again reads the video again


def test_bad_long_video_inputs_raise_naming_the_problem(tokenizer, tmp_path):
    model, processor = build(tokenizer)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    with pytest.raises(VideoReadError):
        processor.video_chunks(str(broken))
    with pytest.raises(VideoReadError):
        processor.video_chunks(str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="chunk_frames must be a positive integer"):
        processor.video_chunks(random_frames(4), chunk_frames=0)
    with pytest.raises(ValueError, match="no frames"):
        model.encode_video([], progress=False)
    with pytest.raises(ValueError, match=r"each chunk must be a \(frames, channels, height, width\)"):
        model.encode_video([torch.zeros(3, 48, 48)], progress=False)
    frames = list(processor.video_chunks(random_frames(6), chunk_frames=3))
    for streaming in (model, build(tokenizer, temporal_bidirectional=False)[0]):
        with pytest.raises(ValueError, match="num_frames=4, but more frames came"):
            streaming.encode_video(frames, num_frames=4, progress=False)
        with pytest.raises(ValueError, match="num_frames=9, but 6 frames came"):
            streaming.encode_video(frames, num_frames=9, progress=False)
    with pytest.raises(ValueError, match="videos or video_num_frames"):
        processor(text="<video> what", videos=[random_frames(4)], video_num_frames=[4])
    with pytest.raises(ValueError, match="positive frame counts"):
        processor(text="<video> what", video_num_frames=[0])


def reference_answer(model, processor, frames, question, new_tokens=6):
    inputs = processor(text=video_question_prompt(processor, question), videos=[frames], do_sample_frames=False,
                       return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("layout,prefill", [("forward-only", "push"), ("forward-only k=3 p=2 s=2, 2 layers", "push"),
                                            ("forward-only k=3 p=2 s=2, 2 layers", "ask"),
                                            ("no temporal encoder", "push")])
def test_a_live_session_answers_as_the_one_shot_path_on_the_frames_seen(tokenizer, layout, prefill):
    model, processor = build(tokenizer, **LAYOUTS[layout])
    session = model.live_session(processor, prefill=prefill)
    assert isinstance(session, StormLiveSession)
    frames = random_frames(29, seed=3)
    question = "which colour appears first ?"
    seen = 0
    for count in (1, 4, 2, 7, 3, 12):  # windows completed across pushes, and partial windows at each question
        session.push(frames[seen:seen + count])
        seen += count
        video_length = len(session.input_ids)  # with prefill="ask" the cache catches up at the question
        if prefill == "ask":
            assert session.cache.get_seq_length() <= video_length
        answer = session.ask(question, max_new_tokens=6)
        assert session.cache.get_seq_length() == video_length  # the question and answer are not kept
        assert answer == reference_answer(model, processor, frames[:seen], question)
        assert session.ask("what shape is it ?", max_new_tokens=6) == reference_answer(
            model, processor, frames[:seen], "what shape is it ?")
    assert session.frames_seen == 29
    # the cache holds the prompt's start and every completed window's tokens, nothing else
    complete_windows = model.config.num_visual_tokens(29 // model.config.temporal_pool_k * model.config.temporal_pool_k)
    assert session.cache.get_seq_length() == len(session.input_ids) == 2 + complete_windows


def test_live_sessions_refuse_bidirectional_models_and_empty_asks(tokenizer):
    model, processor = build(tokenizer)
    with pytest.raises(ValueError, match="forward only in raster order"):
        model.live_session(processor)
    model, processor = build(tokenizer, temporal_bidirectional=False, temporal_scan_order="time_major")
    with pytest.raises(ValueError, match="forward only in raster order"):
        model.live_session(processor)
    model, processor = build(tokenizer, temporal_bidirectional=False)
    session = model.live_session(processor)
    with pytest.raises(ValueError, match="no frames yet"):
        session.ask("which colour appears first ?")
    session.push(random_frames(2))
    with pytest.raises(ValueError, match="question is empty"):
        session.ask("  ")
    with pytest.raises(ValueError, match="prefill must be 'push' or 'ask'"):
        model.live_session(processor, prefill="never")


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "no temporal encoder"])
def test_the_encoder_writing_over_its_input_gives_its_outputs(tokenizer, layout):
    model, _ = build(tokenizer, temporal_final_norm=True, **LAYOUTS[layout])
    encoder = model.model.temporal_encoder
    tokens = torch.randn(1, 13 * 16, 64)  # 13 frames of 16 tokens: 208 tokens in chunks of 64
    with torch.no_grad():
        expected = encoder(tokens, 16)
        buffer = tokens.clone()
        out = encoder(buffer, 16, overwrite_input=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    if "alternating" not in layout:
        assert out.data_ptr() == buffer.data_ptr()  # raster layouts: the output is the input's memory
    with pytest.raises(ValueError, match="inference only"):
        encoder(tokens, 16, overwrite_input=True)
