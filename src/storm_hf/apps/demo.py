# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""`storm-hf demo`: ask a STORM model about a video and show what it saw and where the time went.

    storm-hf demo                                   # one held-out benchmark clip per question type: question,
                                                    # expected, given; then the window-reversal check below
    storm-hf demo --task colour_change --seed 3     # one generated benchmark clip, with the full report
    storm-hf demo --video clip.mp4 --question "which way does the white square move ?"
    storm-hf demo --video https://example.com/clip.mp4 --question "what happens ?"   # a URL is downloaded first
    storm-hf demo --web [--port 7860]              # the same on a web page (needs Gradio, see --web)
    storm-hf demo --live clip.mp4 --ask "2:which way does the white square move ?" [--realtime]
                                                    # the file played as live video to a forward-only model

The model is the bundled one (`storm_hf.miniature.BUNDLED_MODEL`, trained on `storm_hf.miniature.temporal_qa`) unless
``--model`` names another checkpoint folder or Hub id. The report gives the answer, the frames sampled with
their timestamps, the visual tokens before and after token reduction, and the time of each stage (video
decode, vision tower, projector, temporal encoder, token reduction, LLM prefill, decode), each stage run by
the model's own stage methods (`StormModel.vision_patch_features`, `projector`, `encode_in_time`, `reduce_tokens`)
and the LLM through `generate()`.

``--live VIDEO`` pushes the video's frames (``--fps``, default 4) one by one to a `StormLiveSession` and asks
each ``--ask SECONDS:QUESTION`` when playback reaches it (``--question``: at the end), answering from the LLM's
cached video; ``--realtime`` paces the frames as the video plays. Live use needs a forward-only model: without
``--model`` it is the bundled model's image encoder and LLM with a new forward-only temporal layer
(`storm_hf.miniature.bundled_forward_only`); a bidirectional ``--model`` is refused with a message.

Without arguments the demo ends with the check STORM exists for: a within-window clip (the order of two events
inside one window of k frames, which k-frame pooling alone erases) asked as recorded and again with the frames
of each window reversed. A model without temporal encoder sees the same pooled tokens both ways, so it must
give the same answer; a STORM whose encoder wrote the order into its tokens answers the other way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile

import torch

from ..inference import DemoAnswer, SampledVideo, ask, load, sample_video, set_sampling_stride, unknown_words


def _report(result: DemoAnswer, model, header: str):
    c = model.config
    print(header)
    print(f"answer: {result.answer}")
    shown = [f"{i} ({t:.2f} s)" for i, t in zip(result.frame_indices, result.timestamps)] or \
        [str(i) for i in result.frame_indices]
    shown = ", ".join(shown if len(shown) <= 16 else shown[:8] + [f"... {len(shown) - 10} more ..."] + shown[-2:])
    print(f"frames sampled ({len(result.frame_indices)}): {shown}")
    print(f"visual tokens: {result.tokens_before} before reduction ({len(result.frame_indices)} frames x "
          f"{c.tokens_per_frame}), {result.tokens_after} after (temporal pool k={c.temporal_pool_k}, spatial pool "
          f"p={c.spatial_pool_p}, sampling s={c.temporal_sample_s}): {result.tokens_before / result.tokens_after:.1f}x "
          "fewer")
    print("time per stage:")
    for stage, value in result.seconds.items():
        after = result.new_tokens - 1
        extra = f" ({after} token{'' if after == 1 else 's'} after the first)" if stage == "decode" else ""
        print(f"  {stage:18s} {value * 1000:8.1f} ms{extra}")


def _held_out_clips(count: int, seed: int):
    from ..miniature.temporal_qa import ALL_TASKS, clip_rng, make_clip

    return [make_clip(clip_rng("test", seed, i), ALL_TASKS[i % len(ALL_TASKS)]) for i in range(count)]


def _window_reversal_check(model, processor, folder: str, seed: int, num_frames, max_new_tokens):
    """Ask a colour_change clip (a colour for 2 frames, then another for 2, inside one window of k) as recorded
    and with the frames of each window reversed; print both answers. Returns (as recorded, reversed) or None
    for a model that pools no frames (k = 1: nothing is erased, nothing to check)."""
    from ..evaluation.temporal import window_reversed_order
    from ..miniature.temporal_qa import clip_rng, make_clip, write_video

    k = model.config.temporal_pool_k
    if k < 2:
        return None
    clip = make_clip(clip_rng("test", seed, 0), "colour_change")
    sampled = sample_video(processor, write_video(os.path.join(folder, "window.mp4"), clip.frames), num_frames)
    order = window_reversed_order(len(sampled.indices), k)
    reversed_video = SampledVideo(**{**vars(sampled), "frames": sampled.frames[order],
                                     "indices": [sampled.indices[i] for i in order],
                                     "timestamps": [sampled.timestamps[i] for i in order]})
    recorded = ask(model, processor, sampled, clip.question, max_new_tokens=max_new_tokens).answer
    flipped = ask(model, processor, reversed_video, clip.question, max_new_tokens=max_new_tokens).answer
    other = next(option for option in clip.options if option != clip.answer)  # first once the window is reversed
    encoder = "a temporal encoder" if model.config.temporal_num_layers else "no temporal encoder"
    print(f"order inside one pooling window (k={k}; the model has {encoder}):\n"
          f"[colour_change] {clip.question}\n"
          f"    as recorded:                              answer {recorded} (right: {clip.answer})\n"
          f"    frames reversed inside each window of {k}:  answer {flipped} (right: {other})\n"
          + ("    the answer follows the order inside the window: it survived the pooling" if recorded != flipped
             else "    the same answer both ways: the order inside the window did not reach the answer"))
    return recorded, flipped


def _check_video_argument(parser, flag: str, video: str):
    """Refuse, before the model loads, a URL of a scheme we do not read and a local file that is not there."""
    from ..video_io import VideoReadError, _file_url_path, _url_scheme, check_url

    try:
        check_url(video)
    except VideoReadError as error:
        parser.error(f"{flag} {error}")
    scheme = _url_scheme(video)
    if scheme in (None, "file") and not os.path.exists(_file_url_path(video) if scheme else video):
        parser.error(f"{flag} {video}: no such file")


@contextlib.contextmanager
def _no_progress_bars():
    """No transformers progress bars ("Loading weights", "Writing model shards") in the report while the model is
    made; the setting is put back after (decoding a long video keeps its bar)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _play_live(parser, args):
    from .live import parse_asks, play_live

    try:
        asks = parse_asks(args.ask, args.question)
    except ValueError as error:
        parser.error(str(error))
    _check_video_argument(parser, "--live", args.live)
    args.fps = 4.0 if args.fps is None else args.fps
    if not args.fps > 0:
        parser.error(f"--fps must be positive, got {args.fps}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        from ..miniature import bundled_forward_only

        with _no_progress_bars():
            model, processor = load(args.model or bundled_forward_only(folder))
        name = args.model or \
            "the bundled model's image encoder and LLM with a forward-only temporal layer (bundled_forward_only)"
        print(f"model: {name}")
        print(f"playing {args.live} as live video, {args.fps:g} frames a second"
              f"{' at its own pace' if args.realtime else ''}")

        def show(result):
            print(f"[{result.at_seconds:6.2f} s, {result.frames_seen} frames] {result.question}\n"
                  f"    answer: {result.answer}   ({result.seconds * 1000:.0f} ms from the cached video)")

        answers, pushes = play_live(model, processor, args.live, asks, fps=args.fps, realtime=args.realtime,
                                    max_new_tokens=args.max_new_tokens or 8, on_answer=show)
    quarter = max(1, len(pushes) // 4)
    print(f"{len(pushes)} frames pushed: {statistics.median(pushes) * 1000:.1f} ms per frame (median; first "
          f"quarter {statistics.mean(pushes[:quarter]) * 1000:.1f} ms, last {statistics.mean(pushes[-quarter:]) * 1000:.1f} ms)")
    return answers


def main(argv=None):
    parser = argparse.ArgumentParser(prog="storm-hf demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder or Hub id (default: the bundled model)")
    parser.add_argument("--video", help="a video file (any container / codec PyAV reads) or a still image, as a "
                        "path or an http(s):// or file:// URL (downloaded first)")
    parser.add_argument("--question", help="the question (needed with --video; with --task it replaces the "
                        "clip's own)")
    parser.add_argument("--task", help="generate one held-out benchmark clip of this question type")
    parser.add_argument("--seed", type=int, default=0, help="which generated clip (with --task, or without arguments)")
    parser.add_argument("--clips", type=int, default=10, help="held-out clips to run without arguments (default 10, "
                        "one per question type of storm_hf.miniature.temporal_qa.ALL_TASKS)")
    parser.add_argument("--num-frames", type=int, help="frames sampled from the video (default: the processor's)")
    parser.add_argument("--fps", type=float, help="frames sampled a second instead (--video; with --live the frames "
                        "pushed a second, default 4)")
    parser.add_argument("--chunk-frames", type=int, default=64, help="a --video sampled to more frames than this is "
                        "decoded, encoded and reduced this many frames at a time (model.encode_video), never all its "
                        "pixels at once (default 64)")
    parser.add_argument("--sampling-stride", type=int, help="test-time temporal sampling s (model and processor)")
    parser.add_argument("--max-new-tokens", type=int, help="answer length at most (default 8; 64 with --web)")
    live = parser.add_argument_group("live video (storm_hf.apps.live)")
    live.add_argument("--live", metavar="VIDEO", help="play VIDEO (a file or URL) as live video to a forward-only model")
    live.add_argument("--ask", action="append", metavar="SECONDS:QUESTION",
                      help="ask QUESTION once playback reaches SECONDS (repeatable)")
    live.add_argument("--realtime", action="store_true", help="push the frames at the video's own pace")
    web = parser.add_argument_group("web page (storm_hf.apps.web_demo)")
    web.add_argument("--web", action="store_true", help="serve the Gradio page instead (needs Gradio: pip install "
                     "-e \".[demo]\" in the repository root, or pip install \"gradio>=6,<7\")")
    web.add_argument("--port", type=int, help="the page's port (default: Gradio's, 7860, or GRADIO_SERVER_PORT)")
    web.add_argument("--host", help="the address to serve on (default 127.0.0.1; 0.0.0.0 for every interface)")
    web.add_argument("--max-frames", type=int, help="the page's frame budget: frames sampled at most per video "
                     "(default 64)")
    web.add_argument("--max-upload-mb", type=float, help="the largest upload the page takes, in MB (default 500), "
                     "so that one upload cannot fill the server's disk")
    args = parser.parse_args(argv)
    if args.question is not None and not args.question.strip():
        parser.error("--question is empty: give a question about the video")
    if args.clips < 1:
        parser.error(f"--clips must be at least 1, got {args.clips}")
    if args.web:
        if args.video or args.task:
            parser.error("--web serves a page where videos are uploaded: give --video or --task without --web")
        if args.question:
            parser.error("--web serves a page where questions are typed: give --question with --video, not --web")
        try:
            from .web_demo import DEFAULT_FRAME_BUDGET, DEFAULT_MAX_UPLOAD_MB, _gradio, launch, upload_limit_bytes

            _gradio()
        except ImportError as error:
            parser.error(str(error))
        max_upload_mb = DEFAULT_MAX_UPLOAD_MB if args.max_upload_mb is None else args.max_upload_mb
        try:
            upload_limit_bytes(max_upload_mb)
        except ValueError as error:
            parser.error(f"--max-upload-mb: {error}")
        return launch(args.model, port=args.port, host=args.host,
                      budget=DEFAULT_FRAME_BUDGET if args.max_frames is None else args.max_frames,
                      max_new_tokens=64 if args.max_new_tokens is None else args.max_new_tokens,
                      max_upload_mb=max_upload_mb)
    if args.max_upload_mb is not None:
        parser.error("--max-upload-mb caps the web page's uploads: give it with --web")
    if args.num_frames is not None and args.fps is not None:
        parser.error("give --num-frames or --fps, not both")
    if args.chunk_frames < 1:
        parser.error(f"--chunk-frames must be at least 1, got {args.chunk_frames}")
    if args.live:
        if args.video or args.task:
            parser.error("--live plays its own video: give --video or --task without --live")
        return _play_live(parser, args)
    if args.ask:
        parser.error("--ask asks during --live playback: give it with --live VIDEO")
    if args.max_new_tokens is None:
        args.max_new_tokens = 8
    if args.video and args.task:
        parser.error("give --video or --task, not both")
    if args.video and not args.question:
        parser.error("--video needs --question")
    if args.question and not args.video and not args.task:
        parser.error("--question needs --video (the video to ask about), or --task for a generated clip")
    if args.video:
        _check_video_argument(parser, "--video", args.video)
    torch.manual_seed(0)
    with _no_progress_bars():
        model, processor = load(args.model)
    if args.sampling_stride is not None:
        set_sampling_stride(model, processor, args.sampling_stride)
    name = args.model or "the bundled model (storm_hf.miniature.BUNDLED_MODEL)"
    print(f"model: {name}")

    if args.video or args.task:
        with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as downloads:
            if args.video:
                from ..video_io import local_source

                video = downloads.enter_context(local_source(args.video))  # a URL: one download for both runs
                question, expected = args.question, None
            else:
                from ..miniature.temporal_qa import ALL_TASKS, clip_rng, make_clip, write_video

                if args.task not in ALL_TASKS:
                    parser.error(f"--task must be one of {', '.join(ALL_TASKS)}")
                clip = make_clip(clip_rng("test", args.seed, 0), args.task)
                video = write_video(os.path.join(folder, "clip.mp4"), clip.frames)
                question, expected = args.question or clip.question, None if args.question else clip.answer
            unknown = unknown_words(processor, question)
            if unknown:
                print(f"note: the tokenizer does not know {', '.join(unknown)}; this model was trained on its "
                      "benchmark's words only")
            settings = {"fps": args.fps, "chunk_frames": args.chunk_frames}
            ask(model, processor, video, question, args.num_frames, args.max_new_tokens, **settings)  # warm-up
            result = ask(model, processor, video, question, args.num_frames, args.max_new_tokens, **settings)
            header = f"video: {args.video or f'generated {args.task} clip (test split, seed {args.seed})'}\n" \
                     f"question: {question}" + (f"\nexpected: {expected}" if expected else "")
            _report(result, model, header)
        return result

    clips = _held_out_clips(args.clips, args.seed)
    results, correct = [], 0
    with tempfile.TemporaryDirectory() as folder:
        from ..miniature.temporal_qa import write_video

        for number, clip in enumerate(clips):
            video = write_video(os.path.join(folder, f"{number}.mp4"), clip.frames)
            if number == 0:
                ask(model, processor, video, clip.question, args.num_frames, args.max_new_tokens)  # warm-up
            result = ask(model, processor, video, clip.question, args.num_frames, args.max_new_tokens)
            results.append(result)
            correct += result.answer == clip.answer
            print(f"[{clip.task}] {clip.question}\n    expected: {clip.answer:10s} given: {result.answer}"
                  f"{'' if result.answer == clip.answer else '   (wrong)'}")
    print(f"{correct} of {len(clips)} correct (held-out test clips, seed {args.seed})")
    first = results[0]
    print(f"visual tokens per clip: {first.tokens_before} before reduction, {first.tokens_after} after "
          f"({first.tokens_before / first.tokens_after:.1f}x fewer)")
    print(f"time per stage, median over the {len(results)} clips:")
    for stage in first.seconds:
        print(f"  {stage:18s} {statistics.median(r.seconds[stage] for r in results) * 1000:8.1f} ms")
    with tempfile.TemporaryDirectory() as folder:
        _window_reversal_check(model, processor, folder, args.seed, args.num_frames, args.max_new_tokens)
    return results


__all__ = ["ask", "load", "sample_video", "set_sampling_stride", "DemoAnswer", "SampledVideo", "main"]
