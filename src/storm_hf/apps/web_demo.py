# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""`storm-hf demo --web`: a Gradio page to ask a STORM model about a video and see what it saw.

    storm-hf demo --web                                  # the bundled model, http://127.0.0.1:7860
    storm-hf demo --web --model ./my-storm --port 8000   # any checkpoint folder or Hub id

Upload a video (or pick a bundled example clip), type a question, choose how frames are sampled (a number of
frames, or frames a second, within a frame budget) and the token reduction (k, p, s). The answer streams in as
it is generated; beside it are the visual tokens before and after reduction and the time of each stage, and
below, the sampled frames with their timestamps. Decoding shows its progress. Settings out of range (frames
beyond the frame budget, k / p / s beyond the page's ranges, a fractional frame count) are refused with a ⚠️
message naming the setting and its range, never clamped. Uploads are capped (`DEFAULT_MAX_UPLOAD_MB`, 500 MB;
`--max-upload-mb`), so that one upload cannot fill the server's disk. `app.py` at the repository root serves
the same page as a Hugging Face Space.

Gradio is an optional extra: ``pip install -e ".[demo]"`` in the repository root (or ``pip install
"gradio>=6,<7"``). The page's logic (`answer_updates`) is plain Python and does not import Gradio; `build_demo`
lays it out.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..inference import SampledVideo, ask, following_the_model, load, unknown_words
from ..miniature import DEMO_CLIPS

EXAMPLES_DIR = DEMO_CLIPS  # the page's example clips, bundled with the miniature model
DEFAULT_FRAME_BUDGET = 64  # frames sampled at most per video, unless --max-frames says otherwise
DEFAULT_MAX_UPLOAD_MB = 500  # an upload's size at most, in MB (2**20 bytes), unless --max-upload-mb says otherwise
# The page's ranges for the other settings (the frame count's is 1 .. the frame budget; p's is 1 .. the grid).
MAX_FPS = 30.0
MAX_TEMPORAL_POOL_K = 8
MAX_TEMPORAL_SAMPLE_S = 8
STRIP_FRAME_SIDE = 256  # the frame strip shows frames at most this many pixels on their longer side
PROGRESS_EVERY = 0.25  # seconds between two progress updates of the page while a video decodes
logger = logging.getLogger(__name__)


def example_clips() -> list[dict]:
    """The bundled example clips: dicts with ``video`` (a path), ``question``, ``answer`` and ``task``."""
    with open(os.path.join(EXAMPLES_DIR, "clips.json"), encoding="utf-8") as f:
        clips = json.load(f)
    return [{**clip, "video": os.path.join(EXAMPLES_DIR, clip["video"])} for clip in clips]


def write_example_clips(folder, model, processor, tasks=("direction", "flash_count", "first_appeared",
                                                         "stop_or_reverse", "colour_change"), scale: int = 4,
                        seed: int = 100):
    """Write one held-out benchmark clip per task that ``model`` answers right, ``scale`` times larger (so a
    browser shows more than a stamp; the processor scales it back down) in H.264 4:2:0, which browsers play,
    and ``clips.json``. Rebuilds the bundled examples: ``write_example_clips(EXAMPLES_DIR, *load())``."""
    from ..miniature.temporal_qa import clip_rng, make_clip, write_video

    os.makedirs(folder, exist_ok=True)
    clips = []
    for task in tasks:
        for number in range(50):
            clip = make_clip(clip_rng("test", seed, number), task)
            frames = clip.frames.repeat(scale, axis=1).repeat(scale, axis=2)  # (frames, H * scale, W * scale, 3)
            path = write_video(os.path.join(folder, f"{task}.mp4"), frames, pix_fmt="yuv420p",
                               options={"crf": "18", "g": str(len(frames)), "bf": "0"})
            if ask(model, processor, path, clip.question).answer == clip.answer:
                break
        else:
            raise RuntimeError(f"write_example_clips: the model answers none of 50 {task} clips right.")
        clips.append({"video": f"{task}.mp4", "question": clip.question, "answer": clip.answer, "task": task,
                      "source": f"storm_hf.miniature.temporal_qa test split, seed {seed}, clip {number}, x{scale}"})
    with open(os.path.join(folder, "clips.json"), "w", encoding="utf-8") as f:
        json.dump(clips, f, indent=1)
    return clips


# ----------------------------------------------------------------------------------------------------
# The page's logic, without Gradio
# ----------------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One question from the page."""

    video: str | None  # the uploaded file's path
    question: str
    sample_by: str = "frames"  # "frames": `num_frames` evenly; "fps": `fps` frames a second
    num_frames: int = 16
    fps: float = 1.0
    temporal_pool_k: int = 4
    spatial_pool_p: int = 1
    temporal_sample_s: int = 1


@dataclass
class Page:
    """What the page shows; `answer_updates` yields a new one each time something changes."""

    status: str = ""
    answer: str = ""
    frames: list = field(default_factory=list)  # [(image (H, W, 3) uint8, caption)]
    tokens: str = ""
    timings: str = ""
    failed: bool = False


class RequestError(ValueError):
    """A request the page answers with a message instead of an answer (the message says what to change)."""


def _shown(value) -> str:
    """A setting's value as the page shows it: 16 (not 16.0) for whole numbers, "nothing" for an empty box."""
    if value is None:
        return "nothing"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _whole(value, low: int, high: int) -> bool:
    """Whether ``value`` (an int, or a float such as 16.0 from a number box) is a whole number in low..high."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return float(value).is_integer() and low <= value <= high


def _check(request: Request, budget: int, grid_size: int | None = None) -> None:
    """RequestError for a request the page cannot answer; settings out of range are refused, never clamped
    (the page says which setting, its range and the value given). ``grid_size``: tokens per side of a frame
    (p's upper bound; unchecked when None)."""
    if not request.video:
        raise RequestError("No video: upload a video file or pick one of the example clips.")
    if not os.path.isfile(request.video):
        raise RequestError("The uploaded video is no longer on the server; upload it again.")
    if not request.question or not request.question.strip():
        raise RequestError("The question is empty: type a question about the video.")
    if request.sample_by not in ("frames", "fps"):
        raise RequestError(f"Sample frames by 'frames' or 'fps', not {request.sample_by!r}.")
    if request.sample_by == "frames" and not _whole(request.num_frames, 1, budget):
        raise RequestError(f"Frames must be a whole number between 1 and the frame budget, {budget}; got "
                           f"{_shown(request.num_frames)}.")
    if request.sample_by == "fps" and not (isinstance(request.fps, (int, float)) and not isinstance(request.fps, bool)
                                           and 0 < request.fps <= MAX_FPS):
        raise RequestError(f"Frames a second must be above 0 and at most {MAX_FPS:g}; got {_shown(request.fps)}.")
    ranges = (("temporal_pool_k", "k (temporal pooling)", MAX_TEMPORAL_POOL_K),
              ("spatial_pool_p", "p (spatial pooling)", grid_size),
              ("temporal_sample_s", "s (temporal sampling)", MAX_TEMPORAL_SAMPLE_S))
    for name, label, high in ranges:
        value = getattr(request, name)
        if not _whole(value, 1, high or float("inf")):
            limit = f"between 1 and {high}" if high else "at least 1"
            raise RequestError(f"{label} must be a whole number {limit}; got {_shown(value)}.")


def _strip(sampled: SampledVideo) -> list:
    """The sampled frames, scaled down for the page, each with its frame number and time."""
    from PIL import Image

    shown = []
    for frame, index, stamp in zip(sampled.frames, sampled.indices, sampled.timestamps):
        image = Image.fromarray(frame)
        if max(image.size) > STRIP_FRAME_SIDE:
            image.thumbnail((STRIP_FRAME_SIDE, STRIP_FRAME_SIDE))
        shown.append((np.asarray(image), f"frame {index} · {stamp:.2f} s"))
    return shown


def _sampling_note(request: Request, sampled: SampledVideo, budget: int) -> str:
    count, first, last = len(sampled.indices), sampled.timestamps[0], sampled.timestamps[-1]
    text = (f"Sampled {count} of the video's {sampled.total_frames} frames ({sampled.duration:.1f} s), "
            f"{first:.2f} s to {last:.2f} s.")
    if sampled.before_budget > count:
        asked = f"{request.fps:g} frames a second" if request.sample_by == "fps" else f"{request.num_frames} frames"
        every = (last - first) / (count - 1) if count > 1 else 0.0
        text += (f" This video is too long for the frame budget: {asked} would be {sampled.before_budget} frames, "
                 f"more than the budget of {budget}, so {count} frames were sampled evenly instead, about one "
                 f"every {every:.2f} s.")
    elif request.sample_by == "frames" and request.num_frames > count:
        text += f" The video has only {sampled.total_frames} frames, so all of them were used."
    return text


def _tokens_table(model, frames: int, before: int, after: int) -> str:
    c = model.config
    return ("| visual tokens | |\n|---|---|\n"
            f"| before reduction | **{before}** ({frames} frames × {c.tokens_per_frame}) |\n"
            f"| after reduction | **{after}** (temporal pool k = {c.temporal_pool_k}, spatial pool p = "
            f"{c.spatial_pool_p}, sampling s = {c.temporal_sample_s}) |\n"
            f"| reduction | {before / after:.1f}× fewer |")


def _timings_table(seconds: dict, new_tokens: int) -> str:
    rows = ["| stage | ms |", "|---|---:|"]
    for stage, value in seconds.items():
        later = new_tokens - 1
        after = f" ({later} token{'s' if later > 1 else ''} after the first)" if stage == "decode" and later else ""
        rows.append(f"| {stage}{after} | {value * 1000:.1f} |")
    rows.append(f"| **total** | **{sum(seconds.values()) * 1000:.1f}** |")
    return "\n".join(rows)


def _readable(error: BaseException, request: Request) -> str:
    """The message the page shows for ``error``: the reason, with the upload's server path cut to its name."""
    from ..video_io import VideoReadError

    text = str(error)
    if request.video:
        text = text.replace(str(request.video), os.path.basename(request.video))
    if isinstance(error, RequestError):
        return text
    if isinstance(error, VideoReadError):
        return f"This file cannot be read as a video. {text}"
    if isinstance(error, ValueError):
        return f"These settings cannot be used with this model or video. {text}"
    return f"The model failed on this request ({type(error).__name__}: {text}). Try again, or another video."


def describe_upload(path) -> tuple[str, bool]:
    """What the page says about a file just uploaded, before any question: its length, frames and size, or why
    it cannot be read as a video; and whether it is a video a player could show (not a still image)."""
    from ..video_io import VideoReadError, probe_video

    if not path:
        return "", False
    name = os.path.basename(path)
    try:
        index = probe_video(path)
    except VideoReadError as error:
        return "⚠️ " + _readable(error, Request(path, "")), False
    if index.is_image:
        return f"{name}: a still image ({index.width}×{index.height}), read as a one-frame video.", False
    rate = f" at {index.fps:g} frames a second" if index.fps else ""
    return (f"{name}: {index.duration:.1f} s, {index.total_frames} frames{rate}, {index.width}×{index.height}. "
            "Type a question and press Ask."), True


def answer_updates(model, processor, request: Request, lock: threading.Lock, budget: int = DEFAULT_FRAME_BUDGET,
                   max_new_tokens: int = 64):
    """Answer ``request``, yielding the `Page` each time it changes: decoding progress, the sampled frames, the
    token counts, the answer token by token, and at the end the time per stage. A request that cannot be
    answered ends with ``failed`` set and a message in ``status``; nothing is raised, and the model is left as
    it was for the next request. ``lock``: held while the model works (its k / p / s are set per request)."""

    page = Page(status="Waiting for the model…")
    try:
        _check(request, budget, model.config.grid_size)
    except RequestError as error:
        page.status, page.failed = _readable(error, request), True
        yield replace(page)  # a copy: what was shown stays as it was
        return
    yield replace(page)
    events: queue.Queue = queue.Queue()
    name = os.path.basename(request.video)
    sampling = ({"num_frames": int(request.num_frames)} if request.sample_by == "frames"
                else {"fps": float(request.fps)})

    def work():
        frames = []

        def tell(kind, value):
            if kind == "sampled":
                frames.append(len(value.indices))
            if kind == "tokens":  # the table now, while the model holds this request's k / p / s
                value = _tokens_table(model, frames[0] if frames else 0, *value)
            events.put((kind, value))

        try:
            with lock, following_the_model(model, processor, int(request.temporal_pool_k),
                                           int(request.spatial_pool_p), int(request.temporal_sample_s)):
                events.put(("started", None))
                result = ask(model, processor, request.video, request.question, max_new_tokens=max_new_tokens,
                             max_frames=budget, on_event=tell, **sampling)
            events.put(("done", result))
        except Exception as error:  # shown on the page; the server log keeps the traceback of unexpected ones
            if isinstance(error, ValueError):  # bad input (VideoReadError is one): its message says it all
                logger.info("storm-hf web demo: request refused: %s", error)
            else:
                logger.warning("storm-hf web demo: request failed", exc_info=True)
            events.put(("error", error))

    threading.Thread(target=work, name="storm-hf-web-answer", daemon=True).start()
    notes, shown_at = [], 0.0
    unknown = unknown_words(processor, request.question)
    if unknown:
        notes.append(f"The tokenizer does not know {', '.join(unknown)}; this model may not understand them.")
    while True:
        kind, value = events.get()
        if kind == "started":
            page.status = f"Decoding {name}…"
        elif kind == "decoding":
            done, total = value
            if done < total and time.perf_counter() - shown_at < PROGRESS_EVERY:
                continue  # at most a few page updates a second while a long video decodes
            shown_at = time.perf_counter()
            page.status = f"Decoding {name}: {done} of {total} frames."
        elif kind == "sampled":
            page.frames = _strip(value)
            notes.insert(0, _sampling_note(request, value, budget))
            page.status = " ".join(notes) + " Encoding the frames…"
        elif kind == "tokens":
            page.tokens = value
            page.status = " ".join(notes) + " Answering…"
        elif kind == "text":
            page.answer = value
        elif kind == "done":
            page.answer = value.answer
            page.timings = _timings_table(value.seconds, value.new_tokens)
            page.status = " ".join(notes + [f"Answered in {sum(value.seconds.values()):.2f} s."])
            yield replace(page)
            return
        elif kind == "error":
            page.status, page.failed = _readable(value, request), True
            yield replace(page)
            return
        yield replace(page)


# ----------------------------------------------------------------------------------------------------
# The Gradio page
# ----------------------------------------------------------------------------------------------------


def _gradio():
    try:
        import gradio
    except ImportError as error:
        raise ImportError("The web demo needs Gradio, an optional extra: pip install -e \".[demo]\" in the "
                          "repository root (or pip install \"gradio>=6,<7\").") from error
    return gradio


def _page_outputs(pages, unchanged):
    """The values of the page's outputs (status, answer, frame strip, tokens, times) for each `Page` of a
    request, with ``unchanged`` (Gradio's skip) in place of a frame strip the page already shows: Gradio writes
    a strip's images to its file cache again each time it is sent, over the files the browser may be reading."""
    shown = None
    for page in pages:
        status = f"⚠️ {page.status}" if page.failed else page.status
        frames = unchanged if shown is not None and page.frames is shown else page.frames
        shown = page.frames
        yield status, page.answer, frames, page.tokens, page.timings


def upload_limit_bytes(max_upload_mb: float) -> int:
    """Gradio's ``max_file_size`` (bytes) for a cap of ``max_upload_mb`` MB (2**20 bytes); ValueError unless > 0."""
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) or not (
            0 < max_upload_mb < float("inf")):
        raise ValueError(f"The upload size cap must be a number of MB above 0, got {max_upload_mb!r}.")
    return max(1, int(max_upload_mb * 2**20))


def build_demo(model_name_or_path=None, model=None, processor=None, budget: int = DEFAULT_FRAME_BUDGET,
               max_new_tokens: int = 64, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """The Gradio page (a `gradio.Blocks`, queued: one request works at a time, the others wait their turn)
    for the model at ``model_name_or_path`` (a checkpoint folder or Hub id; None: the bundled model), or for
    ``model`` and ``processor`` when given. ``budget``: frames sampled at most per video. ``max_upload_mb``:
    the upload cap the page states; it is enforced by serving with ``page.launch(**page.storm_launch_kwargs)``
    (as `launch` and app.py do), which passes Gradio's ``max_file_size``."""
    gr = _gradio()
    limit = upload_limit_bytes(max_upload_mb)
    if model is None or processor is None:
        model, processor = load(model_name_or_path)
    if budget < 1:
        raise ValueError(f"The frame budget must be at least 1 frame, got {budget}.")
    c = model.config
    lock = threading.Lock()
    shown_name = model_name_or_path or "the bundled miniature model (trained on storm_hf.miniature.temporal_qa)"
    default_frames = min(budget, processor.video_processor.num_frames or 16)

    def respond(video, question, sample_by, num_frames, fps, k, p, s):
        request = Request(video, question or "", "fps" if sample_by == "frames a second" else "frames",
                          num_frames, fps, k, p, s)
        yield from _page_outputs(answer_updates(model, processor, request, lock, budget, max_new_tokens), gr.skip())

    def on_upload(path):
        text, playable = describe_upload(path)
        return text, (path if playable else None)

    with gr.Blocks(title="STORM video question answering", analytics_enabled=False) as page:
        gr.Markdown(
            "## STORM: ask a video model about a video\n"
            f"Model: **{shown_name}**. Frames go through the image encoder, the Mamba temporal encoder and token "
            f"reduction ({c.tokens_per_frame} visual tokens per frame before reduction) into the language model."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # Any file is taken (not only the types a browser calls video/*): the server reads it with PyAV
                # and says what is wrong with it, and still images and animated GIFs are one-frame / short videos.
                video = gr.File(label=f"Video file (any container and codec, up to {max_upload_mb:g} MB; drop it "
                                "here)", type="filepath", elem_id="video")
                preview = gr.Video(label="Preview", interactive=False, height=240, elem_id="preview")
                question = gr.Textbox(label="Question", placeholder="which way does the red circle move ?",
                                      elem_id="question")
                with gr.Accordion("Frames and token reduction", open=True):
                    sample_by = gr.Radio(["frames", "frames a second"], value="frames", label="Sample by",
                                         elem_id="sample-by")
                    # Number boxes, not sliders: Gradio's slider clamps a typed value into its range without a
                    # word, and the page promises a message (`_check`) for a value out of range instead.
                    num_frames = gr.Number(default_frames, step=1, label="Frames (evenly spaced)",
                                           info=f"1 to {budget} (the frame budget)", elem_id="num-frames")
                    fps = gr.Number(1.0, step=0.1, label="Frames a second", elem_id="fps",
                                    info=f"Above 0, at most {MAX_FPS:g}; at most {budget} frames: a longer video is "
                                    "sampled evenly instead.")
                    k = gr.Number(c.temporal_pool_k, step=1, label="k: temporal pooling", elem_id="k",
                                  info=f"1 to {MAX_TEMPORAL_POOL_K}: average every k frames' tokens")
                    p = gr.Number(c.spatial_pool_p, step=1, label="p: spatial pooling", elem_id="p",
                                  info=f"1 to {c.grid_size}: average p × p tokens within a frame")
                    s = gr.Number(c.temporal_sample_s, step=1, label="s: temporal sampling", elem_id="s",
                                  info=f"1 to {MAX_TEMPORAL_SAMPLE_S}: keep one pooled frame in s")
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=1):
                status = gr.Markdown(elem_id="status")
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                tokens = gr.Markdown(elem_id="tokens")
                timings = gr.Markdown(elem_id="timings")
        strip = gr.Gallery(label="Sampled frames", columns=8, elem_id="frames", preview=False)
        clips = example_clips() if os.path.isfile(os.path.join(EXAMPLES_DIR, "clips.json")) else []
        if clips:
            gr.Examples([[clip["video"], clip["question"]] for clip in clips], inputs=[video, question],
                        label="Example clips (held-out benchmark clips the bundled model was not trained on)")
        # Reading a file's header does not touch the model: it runs beside a long answer, not after it.
        video.change(on_upload, video, [status, preview], concurrency_limit=4, concurrency_id="upload")
        inputs = [video, question, sample_by, num_frames, fps, k, p, s]
        outputs = [status, answer, strip, tokens, timings]
        # One answer at a time (the model's k / p / s are set per request); the queue keeps the others waiting.
        ask_button.click(respond, inputs, outputs, concurrency_limit=1, concurrency_id="model")
        question.submit(respond, inputs, outputs, concurrency_limit=1, concurrency_id="model")
    page.queue(max_size=32, default_concurrency_limit=1)
    # What serving this page needs: the example clips' folder, and the upload cap (Gradio refuses a larger file
    # with "File size exceeded maximum allowed size of N bytes", in the browser before it is sent, and on the
    # server as HTTP 413).
    page.storm_launch_kwargs = {"allowed_paths": [EXAMPLES_DIR], "max_file_size": limit}
    return page


def launch(model_name_or_path=None, port: int | None = None, host: str | None = None,
           budget: int = DEFAULT_FRAME_BUDGET, max_new_tokens: int = 64,
           max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, **launch_kwargs):
    """Build the page and serve it (blocking) on ``host``:``port`` (None: Gradio's defaults and its
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT environment variables), taking uploads of at most
    ``max_upload_mb`` MB."""
    page = build_demo(model_name_or_path, budget=budget, max_new_tokens=max_new_tokens, max_upload_mb=max_upload_mb)
    return page.launch(server_name=host, server_port=port, **{**page.storm_launch_kwargs, **launch_kwargs})


__all__ = ["Page", "Request", "answer_updates", "build_demo", "describe_upload", "example_clips", "launch", "write_example_clips",
           "upload_limit_bytes", "EXAMPLES_DIR", "DEFAULT_FRAME_BUDGET", "DEFAULT_MAX_UPLOAD_MB"]
