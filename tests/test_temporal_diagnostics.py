"""storm_hf.evaluation.temporal: cross-frame reach and the window-order signal, on untrained miniature models
(the bundled model's figures are in benchmarks/RESULTS.md, measured by benchmarks/temporal_diagnostics.py)."""

import pytest
import torch

from storm_hf import StormProcessor
from storm_hf.evaluation.temporal import _window_reversed, cross_frame_reach, window_order_signal, window_reversed_order
from storm_hf.miniature import mini_config, mini_tokenizer, new_model
from storm_hf.miniature.temporal_qa import clip_rng, make_clip


def clips_and_questions(processor, task="colour_change", count=3):
    clips, questions = [], []
    for i in range(count):
        clip = make_clip(clip_rng("test", 5, i), task)
        pixels = processor.video_processor([clip.frames], do_sample_frames=False, return_tensors="pt")
        clips.append(pixels["pixel_values_videos"][0])
        questions.append((clip.question, clip.options, clip.answer))
    return clips, questions


@pytest.fixture(scope="module")
def arms():
    made = {}
    for arm, extra in (("baseline", {}), ("storm", {}), ("storm-forward", {}),
                       ("storm-time-major", {"temporal_scan_order": "time_major"})):
        config = mini_config(arm.replace("-time-major", ""), temporal_pool_k=4, **extra)
        made[arm] = (new_model(config, seed=0).eval(), StormProcessor.from_config(config, tokenizer=mini_tokenizer()))
    return made


def test_window_reversal_reverses_each_aligned_window():
    frames = torch.arange(10)
    assert _window_reversed(frames, 4).tolist() == [3, 2, 1, 0, 7, 6, 5, 4, 9, 8]
    assert window_reversed_order(6, 4) == [3, 2, 1, 0, 5, 4] and window_reversed_order(3, 1) == [0, 1, 2]
    assert window_reversed_order(0, 4) == []
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        window_reversed_order(4, 0)


def test_the_baseline_cannot_see_order_inside_a_window_and_storm_can(arms):
    model, processor = arms["baseline"]
    clips, questions = clips_and_questions(processor)
    baseline = window_order_signal(model, processor, clips, questions)
    assert baseline["pooled_change"] < 1e-6 and baseline["reversal_drop"] == 0.0  # the same pooled tokens
    assert baseline["clips"] == 3 and 0 <= baseline["accuracy"] <= 1
    for arm in ("storm", "storm-forward", "storm-time-major"):
        model, processor = arms[arm]
        assert window_order_signal(model, processor, clips)["pooled_change"] > 1e-4, arm


def test_reach_is_causal_for_each_direction_and_zero_without_an_encoder(arms):
    model, processor = arms["storm"]
    clips, _ = clips_and_questions(processor, count=1)
    reach = cross_frame_reach(model, clips[0], max_distance=2, probes=1)
    assert set(reach) == {(0, "forward"), (0, "backward")}
    forward, backward = reach[(0, "forward")], reach[(0, "backward")]  # distances -2 .. 2
    assert forward[3:] == [0.0, 0.0] and backward[:2] == [0.0, 0.0]  # a direction never sees the other side
    assert forward[1] > 0 and backward[3] > 0 and forward[2] > 0  # the previous / next frame, and the frame itself
    model, processor = arms["storm-time-major"]
    time_major = cross_frame_reach(model, clips[0], max_distance=2, probes=1)
    # time-major: the previous frame at the same place is the previous step of the scan (inside the
    # convolution), where raster order puts it a whole frame of tokens back
    assert time_major[(0, "forward")][1] > forward[1] and time_major[(0, "backward")][3] > backward[3]
    assert cross_frame_reach(arms["baseline"][0], clips[0], max_distance=2) == {}
    with pytest.raises(ValueError, match="no frame with 8 frames on each side"):
        cross_frame_reach(model, clips[0], max_distance=8)
