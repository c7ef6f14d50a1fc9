"""The web demo's logic without a browser (storm_hf.apps.web_demo.answer_updates, describe_upload, the Gradio page
and app.py built in process); the page driven in headless Chromium is tests/test_web_demo_browser.py."""

import os
import runpy
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import storm_hf
from storm_hf.apps import web_demo
from storm_hf.inference import ask, load, sample_video
from storm_hf.miniature.temporal_qa import clip_rng, make_clip, write_video
from storm_hf.apps.web_demo import Request, answer_updates, describe_upload, example_clips

from .video_factory import make_audio_only

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("video decode", "vision tower", "projector", "temporal encoder", "token reduction", "LLM prefill", "decode")


@pytest.fixture(scope="module")
def bundled():
    return load()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command, log, env=None, timeout=180):
    """Start ``command`` (a web page server) and wait until its page answers on ``env``'s GRADIO_SERVER_PORT;
    returns (process, url). Fails with the server's output if it exits or does not serve in time."""
    import time
    import urllib.request

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"{' '.join(command)} exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{' '.join(command)} did not serve its page within {timeout} s")
        time.sleep(0.5)


def stop_server(process):

    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def run(bundled, request, lock=None, **kwargs):
    model, processor = bundled
    return list(answer_updates(model, processor, request, lock or threading.Lock(), **kwargs))


def long_clip(path, seconds=30, fps=8):
    """A longer generated video: one benchmark clip's frames repeated (seconds * fps frames)."""
    frames = make_clip(clip_rng("test", 5, 0), "direction").frames
    frames = np.concatenate([frames] * (seconds * fps // len(frames)))
    return write_video(path, frames, fps=fps, pix_fmt="yuv420p", options={"g": "16"})


def test_every_bundled_example_clip_is_answered_right_on_the_page(bundled):
    clips = example_clips()
    assert [c["task"] for c in clips] == ["direction", "flash_count", "first_appeared", "stop_or_reverse",
                                          "colour_change"]
    model, _ = bundled
    for clip in clips:
        pages = run(bundled, Request(clip["video"], clip["question"]))
        last = pages[-1]
        assert not last.failed and last.answer == clip["answer"], (clip, last.status)
        assert "Sampled 16 of the video's 16 frames (2.0 s), 0.00 s to 1.88 s." in last.status
        assert f"**{16 * model.config.tokens_per_frame}** (16 frames × 16)" in last.tokens
        assert f"**{model.config.num_visual_tokens(16)}** (temporal pool k = 4" in last.tokens
        assert [caption for _, caption in last.frames][:3] == ["frame 0 · 0.00 s", "frame 1 · 0.12 s", "frame 2 · 0.25 s"]
        assert len(last.frames) == 16 and last.frames[0][0].shape == (192, 192, 3)
        for stage in STAGES:
            assert f"| {stage}" in last.timings
        assert "| **total** |" in last.timings


def test_updates_come_in_order_and_the_answer_streams_before_the_times(bundled, tmp_path):
    clip = example_clips()[1]
    statuses = [page.status for page in run(bundled, Request(clip["video"], clip["question"]))]
    order = ["Waiting for the model", "Decoding flash_count.mp4", "Encoding the frames", "Answering", "Answered in"]
    positions = [next(i for i, s in enumerate(statuses) if key in s) for key in order]
    assert positions == sorted(positions), statuses
    pages = run(bundled, Request(clip["video"], clip["question"]))
    streamed = [page.answer for page in pages if page.answer and not page.timings]
    assert streamed and streamed[-1] == clip["answer"]  # shown before the end, where the times come


def test_the_frame_strip_is_sent_once_per_request_not_with_every_streamed_update(bundled):
    # Gradio rewrites a strip's image files each time the strip is sent, under the browser reading them.
    clip = example_clips()[0]
    skip = object()
    outputs = list(web_demo._page_outputs(iter(run(bundled, Request(clip["video"], clip["question"]))), skip))
    strips = [frames for _, _, frames, _, _ in outputs]
    assert strips[0] == []  # the first update clears the last request's strip
    sent = [frames for frames in strips[1:] if frames is not skip]
    assert len(sent) == 1 and len(sent[0]) == 16 and len(outputs) > 3
    assert outputs[-1][0].startswith("Sampled 16") and outputs[-1][1] == clip["answer"]
    failed = list(web_demo._page_outputs(iter(run(bundled, Request(clip["video"], " "))), skip))
    assert failed[-1][0] == "⚠️ The question is empty: type a question about the video."


def test_long_video_shows_decoding_progress_and_the_frame_budget(bundled, tmp_path, monkeypatch):
    video = long_clip(tmp_path / "long.mp4", seconds=30)  # 240 frames at 8 fps
    monkeypatch.setattr(web_demo, "PROGRESS_EVERY", 0.0)  # every frame's progress reaches the page
    pages = [p.status for p in answer_updates(*bundled, Request(str(video), "which way does the red cross move ?",
                                                                 "fps", fps=4.0), threading.Lock(), budget=48)]
    progress = [s for s in pages if s.startswith("Decoding long.mp4: ")]
    assert progress[0] == "Decoding long.mp4: 0 of 48 frames." and progress[-1] == "Decoding long.mp4: 48 of 48 frames."
    assert len(progress) == 49
    final = pages[-1]
    assert "Sampled 48 of the video's 240 frames (30.0 s)" in final
    assert ("This video is too long for the frame budget: 4 frames a second would be 120 frames, more than the "
            "budget of 48, so 48 frames were sampled evenly instead, about one every 0.62 s.") in final
    assert "Answered in" in final


def test_fewer_frames_than_asked_are_all_used_and_reduction_settings_change_the_tokens(bundled):
    clip = example_clips()[0]
    model, processor = bundled
    last = run(bundled, Request(clip["video"], clip["question"], num_frames=40, temporal_pool_k=2, spatial_pool_p=2,
                                temporal_sample_s=2), budget=40)[-1]
    assert "The video has only 16 frames, so all of them were used." in last.status
    assert "**256** (16 frames × 16)" in last.tokens and "**16** (temporal pool k = 2, spatial pool p = 2, sampling s = 2)" in last.tokens
    assert "16.0× fewer" in last.tokens
    # the request's k / p / s were for that request only
    assert (model.config.temporal_pool_k, model.config.spatial_pool_p, model.config.temporal_sample_s) == (4, 1, 1)
    assert (processor.temporal_pool_k, processor.spatial_pool_p, processor.temporal_sample_s) == (4, 1, 1)


@pytest.mark.parametrize("case, expected", [
    ("no video", "No video: upload a video file or pick one of the example clips."),
    ("empty question", "The question is empty: type a question about the video."),
    ("text file", "This file cannot be read as a video. notes.mp4: not a readable video container"),
    ("audio only", "This file cannot be read as a video. speech.m4a: the file has no video stream (streams: audio)"),
    ("empty file", "This file cannot be read as a video. empty.mp4: the file is empty (0 bytes)."),
    ("zero k", "k (temporal pooling) must be a whole number between 1 and 8; got 0."),
    ("too many frames", "Frames must be a whole number between 1 and the frame budget, 64; got 65."),
    ("fractional frames", "Frames must be a whole number between 1 and the frame budget, 64; got 2.5."),
    ("no frames", "Frames must be a whole number between 1 and the frame budget, 64; got nothing."),
    ("zero fps", "Frames a second must be above 0 and at most 30; got 0."),
    ("too many fps", "Frames a second must be above 0 and at most 30; got 120."),
    ("k too large", "k (temporal pooling) must be a whole number between 1 and 8; got 9."),
    ("p beyond the grid", "p (spatial pooling) must be a whole number between 1 and 4; got 5."),
    ("fractional s", "s (temporal sampling) must be a whole number between 1 and 8; got 1.5."),
])
def test_bad_requests_get_a_message_and_the_next_request_is_answered(bundled, tmp_path, case, expected):
    clip = example_clips()[0]
    good = Request(clip["video"], clip["question"])
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    make_audio_only(tmp_path / "speech.m4a")
    request = {
        "no video": Request(None, "which way ?"),
        "empty question": Request(clip["video"], "   "),
        "text file": Request(str(tmp_path / "notes.mp4"), "which way ?"),
        "audio only": Request(str(tmp_path / "speech.m4a"), "which way ?"),
        "empty file": Request(str(tmp_path / "empty.mp4"), "which way ?"),
        "zero k": Request(clip["video"], "which way ?", temporal_pool_k=0),
        "too many frames": Request(clip["video"], "which way ?", num_frames=65),
        "fractional frames": Request(clip["video"], "which way ?", num_frames=2.5),
        "no frames": Request(clip["video"], "which way ?", num_frames=None),  # the number box emptied
        "zero fps": Request(clip["video"], "which way ?", "fps", fps=0.0),
        "too many fps": Request(clip["video"], "which way ?", "fps", fps=120.0),
        "k too large": Request(clip["video"], "which way ?", temporal_pool_k=9),
        "p beyond the grid": Request(clip["video"], "which way ?", spatial_pool_p=5),  # the bundled grid is 4 x 4
        "fractional s": Request(clip["video"], "which way ?", temporal_sample_s=1.5),
    }[case]
    last = run(bundled, request)[-1]
    assert last.failed and expected in last.status and str(tmp_path) not in last.status
    assert "Traceback" not in last.status and not last.answer
    assert run(bundled, good)[-1].answer == clip["answer"]


def test_a_failure_inside_the_model_is_reported_and_leaves_the_model_working(bundled, monkeypatch):
    model, processor = bundled
    clip = example_clips()[0]

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(model.model, "encode_in_time", broken)
        last = run(bundled, Request(clip["video"], clip["question"], temporal_pool_k=2))[-1]
    assert last.failed and "The model failed on this request (RuntimeError: out of memory (simulated))" in last.status
    assert model.config.temporal_pool_k == 4 and processor.temporal_pool_k == 4  # put back after the failure
    assert run(bundled, Request(clip["video"], clip["question"]))[-1].answer == clip["answer"]


def test_requests_from_several_threads_are_answered_one_at_a_time(bundled):
    """The page queues requests; even so, two answers at once (a page closed mid-answer, its worker still
    running) must not mix their k / p / s: the lock keeps one on the model at a time."""
    clips = example_clips()
    lock, results = threading.Lock(), {}

    def one(position, clip, k):
        results[position] = run(bundled, Request(clip["video"], clip["question"], temporal_pool_k=k), lock)[-1]

    threads = [threading.Thread(target=one, args=(i, clip, 1 + i % 2 * 3)) for i, clip in enumerate(clips * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    model = bundled[0]
    for i, clip in enumerate(clips * 2):
        k = 1 + i % 2 * 3
        assert not results[i].failed, results[i].status
        assert f"**{model.config.num_visual_tokens(16) * 4 // k}** (temporal pool k = {k}," in results[i].tokens
        if k == 4:
            assert results[i].answer == clip["answer"]


def test_describe_upload_says_what_the_file_is_or_why_it_cannot_be_read(tmp_path):
    text, playable = describe_upload(example_clips()[0]["video"])
    assert text == "direction.mp4: 2.0 s, 16 frames at 8 frames a second, 192×192. Type a question and press Ask."
    assert playable
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(tmp_path / "photo.png")
    assert describe_upload(str(tmp_path / "photo.png")) == (
        "photo.png: a still image (40×30), read as a one-frame video.", False)
    (tmp_path / "notes.txt").write_text("hello")
    text, playable = describe_upload(str(tmp_path / "notes.txt"))
    assert text.startswith("⚠️ This file cannot be read as a video. notes.txt: not a readable video container")
    assert str(tmp_path) not in text and not playable
    assert describe_upload(None) == ("", False)


def test_sample_video_gives_the_processor_the_frames_it_would_read_itself(bundled, tmp_path):
    _, processor = bundled
    video = long_clip(tmp_path / "long.mp4", seconds=10)
    for sampling in ({"num_frames": 12}, {"fps": 3.0}, {"fps": 3.0, "max_frames": 7}):
        sampled = sample_video(processor, str(video), **sampling)
        own = processor.video_processor(str(video), return_metadata=True, **sampling)
        given = processor.video_processor([sampled.frames], do_sample_frames=False)
        assert sampled.indices == own["video_metadata"][0].frames_indices
        torch.testing.assert_close(given["pixel_values_videos"], own["pixel_values_videos"], rtol=0, atol=0)
    sampled = sample_video(processor, str(video), fps=3.0, max_frames=7)
    assert len(sampled.indices) == 7 and sampled.before_budget == 30 and sampled.total_frames == 80


def test_ask_tells_each_stage_and_streams_the_text(bundled):
    clip = example_clips()[2]
    events = []
    result = ask(*bundled, clip["video"], clip["question"], on_event=lambda kind, value: events.append((kind, value)))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "decoding" and events[0][1] == (0, 16) and ("decoding", (16, 16)) in events
    assert kinds.index("sampled") < kinds.index("tokens") < kinds.index("text")
    assert ("tokens", (256, 64)) in events and [v for k, v in events if k == "text"][-1] == result.answer


def by_id(page, elem_id):
    return next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_gradio_page_and_app_py_build(bundled, monkeypatch):
    gr = pytest.importorskip("gradio")
    page = web_demo.build_demo(model=bundled[0], processor=bundled[1], budget=32)
    assert isinstance(page, gr.Blocks)
    ids = {block.elem_id for block in page.blocks.values()}
    assert {"video", "preview", "question", "ask", "status", "answer", "tokens", "timings", "frames"} <= ids
    # Number boxes without bounds: a value out of range reaches the page's check (a message), where a slider or
    # a bounded box would clamp it in the browser, or refuse it with Gradio's own error.
    for elem_id in ("num-frames", "fps", "k", "p", "s"):
        box = by_id(page, elem_id)
        assert isinstance(box, gr.Number) and box.minimum is None and box.maximum is None, elem_id
    assert by_id(page, "p").info.startswith("1 to 4:") and by_id(page, "k").info.startswith("1 to 8:")
    assert page.storm_launch_kwargs == {"allowed_paths": [web_demo.EXAMPLES_DIR], "max_file_size": 500 * 2**20}
    monkeypatch.setenv("STORM_MAX_FRAMES", "24")
    monkeypatch.setenv("STORM_MAX_UPLOAD_MB", "2")
    namespace = runpy.run_path(str(ROOT / "app.py"), run_name="space")  # as a Space imports it, without serving
    assert isinstance(namespace["demo"], gr.Blocks)
    assert by_id(namespace["demo"], "num-frames").info == "1 to 24 (the frame budget)"
    assert "up to 2 MB" in by_id(namespace["demo"], "video").label
    assert namespace["demo"].storm_launch_kwargs["max_file_size"] == 2 * 2**20


def test_the_upload_cap_is_passed_to_gradio_by_every_way_of_serving(bundled, monkeypatch):
    gr = pytest.importorskip("gradio")
    from storm_hf.apps.cli import main

    served = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: served.append(kwargs))
    monkeypatch.setattr(web_demo, "load", lambda name=None: bundled)
    web_demo.launch(port=7000, max_upload_mb=3)
    assert served[-1]["max_file_size"] == 3 * 2**20 and served[-1]["allowed_paths"] == [web_demo.EXAMPLES_DIR]
    main(["demo", "--web", "--max-upload-mb", "0.5"])
    assert served[-1]["max_file_size"] == 2**19
    main(["demo", "--web"])
    assert served[-1]["max_file_size"] == web_demo.DEFAULT_MAX_UPLOAD_MB * 2**20
    monkeypatch.setenv("STORM_MAX_UPLOAD_MB", "7")
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")  # `python app.py`, as a Space runs it
    assert served[-1]["max_file_size"] == 7 * 2**20
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--web", "--max-upload-mb", "0"])
    assert exit.value.code == 2
    with pytest.raises(ValueError, match="The upload size cap must be a number of MB above 0, got -1"):
        web_demo.build_demo(model=bundled[0], processor=bundled[1], max_upload_mb=-1)


def test_an_upload_over_the_cap_is_refused_with_a_readable_message(bundled):
    pytest.importorskip("gradio")
    import json
    import urllib.error
    import urllib.request

    page = web_demo.build_demo(model=bundled[0], processor=bundled[1], max_upload_mb=0.01)  # 10485 bytes
    page.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                **page.storm_launch_kwargs)
    try:
        url = page.local_url
        with urllib.request.urlopen(url + "config", timeout=30) as response:
            assert json.load(response)["max_file_size"] == 10485  # the browser checks it before sending
        for size, refused in ((20_000, True), (5_000, False)):
            boundary = "storm-test-boundary"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"clip.mp4\"\r\n"
                    f"Content-Type: video/mp4\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
            request = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, text = response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                status, text = error.code, error.read().decode()
            if refused:
                assert status == 413 and "File size exceeded maximum allowed size of 10485 bytes." in text
            else:
                assert status == 200 and "clip.mp4" in text
    finally:
        page.close()


def test_a_space_made_as_the_readme_says_runs_app_py_on_its_own_copy(tmp_path):
    pytest.importorskip("gradio")
    import re

    readme = (ROOT / "README.md").read_text()
    command = next(line for line in re.findall(r"^```bash\n(.*?)^```", readme, flags=re.S | re.M)
                   for line in line.splitlines() if line.startswith("mkdir -p my-space"))
    for name in ("src", "app.py", "space"):
        (tmp_path / name).symlink_to(ROOT / name)
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True)
    space = tmp_path / "my-space"
    assert sorted(os.listdir(space)) == ["README.md", "app.py", "requirements.txt", "src"]
    card = (space / "README.md").read_text()
    assert "sdk: gradio" in card and "app_file: app.py" in card
    code = ("import runpy; ns = runpy.run_path('app.py', run_name='space'); import storm_hf; "
            "print(storm_hf.__file__); print(type(ns['demo']).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=space, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "STORM_MAX_FRAMES": "16"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2].startswith(str(space / "src" / "storm_hf")) and out.stdout.split()[-1] == "Blocks"


def test_python_app_py_serves_the_page_and_its_example_clips(tmp_path):
    pytest.importorskip("gradio")
    import json
    import urllib.request

    with open(tmp_path / "server.log", "w+") as log:
        process, url = start_server([sys.executable, str(ROOT / "app.py")], log,
                                    {"GRADIO_SERVER_PORT": str(free_port()), "GRADIO_SERVER_NAME": "127.0.0.1"})
        try:
            with urllib.request.urlopen(url + "config", timeout=30) as response:
                config = json.load(response)
            assert config["title"] == "STORM video question answering"
            # app.py runs this checkout's src/, which need not be the storm_hf this process imported
            clip = ROOT / "src" / "storm_hf" / os.path.relpath(example_clips()[0]["video"], storm_hf.__path__[0])
            with urllib.request.urlopen(url + "gradio_api/file=" + str(clip), timeout=30) as response:
                assert response.read() == clip.read_bytes()
        finally:
            stop_server(process)


def test_space_requirements_are_the_packages_own():
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    own = next(node.value for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "install_requires")
    listed = [line for line in (ROOT / "space" / "requirements.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert listed == [element.value for element in own.elts]


def test_web_flag_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    from storm_hf.apps.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--web"])
    assert exit.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert 'pip install -e ".[demo]" in the repository root (or pip install "gradio>=6,<7")' in err
    assert "storm_hf[" not in err


def test_web_flag_refuses_a_video_argument(capsys):
    from storm_hf.apps.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--web", "--task", "direction"])
    assert "--web serves a page" in capsys.readouterr().err
    for flags in (["demo", "--web"], ["demo"]):
        with pytest.raises(SystemExit):
            main([*flags, "--model", "/nowhere/my-storm"])
        assert "Model /nowhere/my-storm: no such folder" in capsys.readouterr().err


def test_the_web_demo_benchmark_runs_and_sends_the_strip_once(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "web_demo.py"), "--repeats", "1",
                             "--long-seconds", "10"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(strip sent in 1)") == 2 and "10 s video, 4 fps (64-frame budget)" in result.stdout


def test_the_page_serves_a_checkpoint_folder_and_names_it(tmp_path, monkeypatch):
    gr = pytest.importorskip("gradio")
    import shutil

    from storm_hf.miniature import BUNDLED_MODEL

    model, processor = load()
    model.config.temporal_pool_k = 2  # a checkpoint that is not the bundled one: k = 2 shows on the page
    model.save_pretrained(tmp_path / "my-storm")
    processor.save_pretrained(tmp_path / "my-storm")
    monkeypatch.setenv("STORM_MODEL", str(tmp_path / "my-storm"))
    page = runpy.run_path(str(ROOT / "app.py"), run_name="space")["demo"]
    markdown = [b.value for b in page.blocks.values() if isinstance(b, gr.Markdown) and b.value]
    assert any(f"Model: **{tmp_path / 'my-storm'}**" in text for text in markdown)
    k_slider = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "k"][0]
    assert k_slider.value == 2
    shutil.copy(os.path.join(BUNDLED_MODEL, "config.json"), tmp_path / "config.json")
    for wrong, error in [(tmp_path / "nowhere", "no such folder"), (tmp_path / "config.json", "this is a file"),
                         ("./nowhere", "no such folder")]:
        with pytest.raises(OSError, match=error):
            web_demo.build_demo(str(wrong))
