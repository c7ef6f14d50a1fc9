"""`storm-hf demo`: held-out clips with expected and given answers; one clip or any video with the full report
(answer, frames and timestamps, tokens before and after reduction, time per stage); clear errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storm_hf.miniature import build_initial_checkpoint, mini_config
from storm_hf.miniature.tiny import write_clip

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
STAGES = ("video decode", "vision tower", "projector", "temporal encoder", "token reduction", "LLM prefill", "decode")


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def demo(*args, check=True):
    """`storm-hf demo ARGS` in this process (the console script is tested once, below)."""
    import contextlib
    import io

    from storm_hf.apps.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["demo", *args])
        except SystemExit as exit:
            code = exit.code
    if check:
        assert code == 0, err.getvalue()[-3000:]
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    return str(build_initial_checkpoint(tmp_path_factory.mktemp("demo") / "model", mini_config("storm", 4)))


def test_held_out_clips_show_question_expected_and_given(untrained):
    out = demo("--model", untrained, "--clips", "3").stdout
    assert len(re.findall(r"^\[\w+\] .+\?$", out, flags=re.M)) == 3 + 1  # and the window-reversal clip
    assert len(re.findall(r"expected: \w+ +given: ", out)) == 3
    assert re.search(r"\d of 3 correct \(held-out test clips, seed 0\)", out)
    assert "visual tokens per clip: 256 before reduction, 64 after (4.0x fewer)" in out
    for stage in STAGES:
        assert re.search(rf"^  {stage} +\d+\.\d ms$", out, flags=re.M), stage
    # then the window-reversal check: a colour_change clip as recorded and with each window of 4 reversed
    assert "order inside one pooling window (k=4; the model has a temporal encoder):" in out
    assert re.search(r"^\[colour_change\] which colour appears first on the \w+ , \w+ or \w+ \?$", out, flags=re.M)
    assert re.search(r"^    as recorded: +answer .+ \(right: \w+\)$", out, flags=re.M)  # untrained: any words
    assert re.search(r"^    frames reversed inside each window of 4: +answer .+ \(right: \w+\)$", out, flags=re.M)


def test_without_temporal_encoder_the_window_reversal_check_gives_the_same_answer_both_ways(tmp_path):
    # The baseline's k=4 pooled tokens are the same set of frames averaged either way: the same answer by
    # construction (the check's sanity condition); a model that pools nothing skips the check.
    baseline = str(build_initial_checkpoint(tmp_path / "baseline", mini_config("baseline", 4)))
    out = demo("--model", baseline, "--clips", "1").stdout
    assert "order inside one pooling window (k=4; the model has no temporal encoder):" in out
    assert "the same answer both ways: the order inside the window did not reach the answer" in out
    unpooled = str(build_initial_checkpoint(tmp_path / "k1", mini_config("storm", 1)))
    assert "order inside one pooling window" not in demo("--model", unpooled, "--clips", "1").stdout


def test_one_generated_clip_with_sampling_gives_the_full_report(untrained):
    out = demo("--model", untrained, "--task", "order_in_window", "--seed", "2", "--sampling-stride", "2").stdout
    assert "question: which flashes first" in out and re.search(r"^expected: \w+$", out, flags=re.M)
    assert re.search(r"^answer: ", out, flags=re.M)
    assert "frames sampled (16): 0 (0.00 s), 1 (0.12 s), 2 (0.25 s)" in out
    assert "256 before reduction (16 frames x 16), 32 after (temporal pool k=4, spatial pool p=1, sampling s=2)" in out
    for stage in STAGES:
        assert re.search(rf"^  {stage} +\d+\.\d ms", out, flags=re.M), stage


def test_any_video_file(untrained, tmp_path):
    clip = write_clip(tmp_path / "square.mp4", num_frames=48, size=64)
    out = demo("--model", untrained, "--video", str(clip), "--question", "which way does the white square move ?",
               "--num-frames", "8").stdout
    assert "frames sampled (8): 3 (0.12 s), 9 (0.38 s)" in out  # segment centres of 48 frames at 24 fps
    assert "128 before reduction (8 frames x 16), 32 after" in out
    out = demo("--model", untrained, "--video", str(clip), "--question", "what is the juggler doing ?").stdout
    assert "note: the tokenizer does not know juggler, doing" in out


def test_bad_arguments_and_bad_files_are_refused_clearly(untrained, tmp_path):
    result = demo("--model", untrained, "--video", str(tmp_path / "none.mp4"), "--question", "q ?", check=False)
    assert result.returncode == 2 and "no such file" in result.stderr
    result = demo("--model", untrained, "--video", str(tmp_path / "none.mp4"), check=False)
    assert result.returncode == 2 and "--video needs --question" in result.stderr
    result = demo("--model", untrained, "--task", "juggling", check=False)
    assert result.returncode == 2 and "--task must be one of direction" in result.stderr
    (tmp_path / "notes.mp4").write_text("not a video")
    result = demo("--model", untrained, "--video", str(tmp_path / "notes.mp4"), "--question", "q ?", check=False)
    assert result.returncode == 2 and "notes.mp4" in result.stderr and "Traceback" not in result.stderr
    result = demo("--model", str(tmp_path / "missing-model"), check=False)
    assert result.returncode == 2 and "missing-model" in result.stderr and "Traceback" not in result.stderr


def test_a_question_without_a_video_or_an_empty_question_is_refused_by_name(untrained, tmp_path):
    clip = str(write_clip(tmp_path / "square.mp4"))
    for args, message in [
        (("--question", "which way ?"), "--question needs --video (the video to ask about), or --task"),
        (("--video", clip, "--question", ""), "--question is empty: give a question about the video"),
        (("--video", clip, "--question", "   "), "--question is empty"),
        (("--question", ""), "--question is empty"),
        (("--video", clip, "--question", "q ?", "--max-upload-mb", "5"), "--max-upload-mb caps the web page's uploads"),
    ]:
        result = demo("--model", untrained, *args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert not result.stdout  # refused before the model loads
    # with --task, --question replaces the generated clip's own question
    out = demo("--model", untrained, "--task", "direction", "--question", "which way does it move ?").stdout
    assert "question: which way does it move ?" in out


@pytest.mark.parametrize("question", ["", "   ", None])
def test_ask_refuses_an_empty_question(untrained, tmp_path, question):
    from storm_hf.inference import ask, load

    model, processor = load(untrained)
    with pytest.raises(ValueError, match=r"ask: the question is empty \(.*\); give a question about the video"):
        ask(model, processor, str(write_clip(tmp_path / "square.mp4")), question)


def test_ask_refuses_a_bad_frame_count_by_name(untrained, tmp_path):
    from storm_hf.inference import ask, load

    model, processor = load(untrained)
    clip = str(write_clip(tmp_path / "square.mp4"))
    frames = np.zeros((6, 16, 16, 3), np.uint8)
    for video in (clip, frames):
        for num_frames in (2.5, 0):  # 0 was dropped for in-memory frames, giving the default silently
            with pytest.raises(ValueError, match=rf"num_frames must be a whole number of frames, at least 1; got "
                               rf"{num_frames}"):
                ask(model, processor, video, "which way ?", num_frames=num_frames)


def test_a_video_url(untrained, tmp_path, monkeypatch):
    from .url_server import serving

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    clip = Path(write_clip(tmp_path / "square.mp4", num_frames=48, size=64))
    question = "which way does the white square move ?"
    with serving({"/square.mp4": clip.read_bytes()}) as base:
        out = demo("--model", untrained, "--video", base + "/square.mp4", "--question", question, "--num-frames", "8").stdout
        assert f"video: {base}/square.mp4" in out and "frames sampled (8): 3 (0.12 s), 9 (0.38 s)" in out
        result = demo("--model", untrained, "--video", base + "/gone.mp4", "--question", question, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{base}/gone.mp4: the server answered 404 Not Found" in result.stderr
    out = demo("--model", untrained, "--video", clip.as_uri(), "--question", question).stdout
    assert "frames sampled (" in out
    for url, message in [("ftp://host/clip.mp4", "--video ftp://host/clip.mp4: ftp: URLs are not supported"),
                         ((tmp_path / "gone.mp4").as_uri(), "gone.mp4: no such file")]:
        result = demo("--model", untrained, "--video", url, "--question", question, check=False)
        assert result.returncode == 2 and message in result.stderr and not result.stdout


def test_live_playback_answers_at_the_set_times_from_the_cached_video(tmp_path):
    from storm_hf.miniature.temporal_qa import clip_rng, make_clip, write_video

    clip = make_clip(clip_rng("test", 0, 0), "direction")  # 16 frames at 8 fps: 2 s
    video = write_video(tmp_path / "clip.mp4", clip.frames)
    result = demo("--live", str(video), "--fps", "8", "--ask", f"1:{clip.question}", "--question", "what shape is it ?")
    lines = result.stdout.splitlines()
    assert "forward-only temporal layer (bundled_forward_only)" in lines[0]
    asked = [line for line in lines if line.startswith("[")]
    assert asked[0].startswith(f"[  1.00 s, 8 frames] {clip.question}")
    assert asked[1].startswith("[  1.88 s, 16 frames] what shape is it ?")  # asked at the end: the last frame
    answers = [line.split("answer: ")[1].split()[0] for line in lines if "answer: " in line]
    assert answers[0] == clip.answer and len(answers) == 2
    assert re.search(r"^16 frames pushed: [\d.]+ ms per frame", result.stdout, flags=re.M)


def test_live_playback_refuses_bidirectional_models_and_bad_asks(untrained, tmp_path):
    video = write_clip(tmp_path / "clip.mp4", num_frames=8)
    result = demo("--live", str(video), "--model", untrained, "--question", "q ?", check=False)
    assert result.returncode == 2 and "forward only in raster order" in result.stderr
    assert "Traceback" not in result.stderr
    result = demo("--live", str(video), "--ask", "soon:what ?", check=False)
    assert result.returncode == 2 and "give SECONDS:QUESTION" in result.stderr
    result = demo("--live", str(video), check=False)
    assert result.returncode == 2 and "give a question" in result.stderr
    result = demo("--live", str(tmp_path / "none.mp4"), "--question", "q ?", check=False)
    assert result.returncode == 2 and "no such file" in result.stderr
    result = demo("--ask", "1:what ?", check=False)
    assert result.returncode == 2 and "--ask asks during --live playback" in result.stderr


def test_a_long_video_is_asked_in_chunks_with_the_one_shot_answer(untrained, tmp_path):
    from storm_hf.inference import ask, load

    video = str(write_clip(tmp_path / "long.mp4", num_frames=96))
    model, processor = load(untrained)
    whole = ask(model, processor, video, "which way ?", num_frames=40, max_new_tokens=4)
    chunked = ask(model, processor, video, "which way ?", num_frames=40, max_new_tokens=4, chunk_frames=16)
    assert "decode + visual path" in chunked.seconds and "vision tower" in whole.seconds
    assert (chunked.answer, chunked.tokens_after, chunked.frame_indices) == \
        (whole.answer, whole.tokens_after, whole.frame_indices)
    result = demo("--model", untrained, "--video", video, "--question", "which way ?", "--fps", "12",
                  "--chunk-frames", "8")
    assert "decode + visual path" in result.stdout and "frames sampled (48)" in result.stdout
    result = demo("--model", untrained, "--video", video, "--question", "q ?", "--fps", "2", "--num-frames", "4",
                  check=False)
    assert result.returncode == 2 and "--num-frames or --fps, not both" in result.stderr
    result = demo("--model", untrained, "--video", video, "--question", "q ?", "--chunk-frames", "0", check=False)
    assert result.returncode == 2 and "--chunk-frames must be at least 1" in result.stderr
