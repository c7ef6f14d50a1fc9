"""Long videos in bounded memory: peak memory and time of the visual path against the frame count, the
one-shot path (every frame's pixels, then `get_video_features`) against the chunked one (`encode_video` over
pixel chunks), for a bidirectional and a forward-only temporal encoder; then a generated one-hour video at
1 fps (3,600 frames) answered end to end from its file (`video_chunks` -> `encode_video` -> `generate`).

    python benchmarks/long_video.py [--frames 256 1024 4096] [--shapes siglip224|small] [--directions ...] [--hour]
    python benchmarks/long_video.py --live 2048

Shapes (random weights): ``siglip224``, the SigLIP-like encoder of `token_reduction.py` (224 px / patch 16, 6
layers of width 384; 7 x 7 = 49 tokens per frame after the pixel shuffle) with a projector to width 512;
``small``, `vision_memory.py`'s (448 px / patch 14, 12 layers of width 768; 256 tokens per frame, width 896).
One temporal layer (raster), k = 4. The LLM is not run in the memory runs. Each run is a fresh process that
builds the model, then measures the growth of its peak resident memory (ru_maxrss) over producing the pixels
(one fp32 tensor for the one-shot path; 32-frame chunks made as they are read for the chunked one) and the
visual features, under inference mode. Memory is what the process holds; seconds are for orientation only.
The growth per frame is taken between the two largest frame counts and set against the size of the tokens
each path has to keep: the reduced tokens (forward-only) and the projector's tokens (bidirectional).

``--live N``: a forward-only model (siglip224 shapes, a 4-layer LLM) fed N random frames one at a time through
`StormLiveSession.push`, with ``prefill="push"`` (windows enter the LLM's cache as they complete) and then
``prefill="ask"`` (at the next question); prints the time per pushed frame in the first and the last quarter of
the stream, and at N/8, N/2 and N frames the time `ask` takes from the cache against `generate` prefilling the
whole prompt of the same length.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

SHAPES = {
    "siglip224": dict(vision=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                                  image_size=224, patch_size=16), width=512),
    "small": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=448, patch_size=14), width=896),
}
CHUNK_FRAMES = 32


def build_config(shapes, bidirectional, llm_layers=1, spatial_pool_p=1):
    from storm_hf import StormConfig

    shape = SHAPES[shapes]
    width = shape["width"]
    return StormConfig(
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **shape["vision"]),
        text_config=dict(model_type="qwen2", hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=llm_layers, num_attention_heads=width // 64, num_key_value_heads=2,
                         vocab_size=512, max_position_embeddings=65536, eos_token_id=509),
        image_token_id=510, video_token_id=511, temporal_pool_k=4, spatial_pool_p=spatial_pool_p,
        temporal_bidirectional=bidirectional, vision_frames_per_batch=16,
    )


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def pixel_chunks(frames, side):
    """The frames' pixels 32 at a time, each chunk made when it is read (as a decoder would)."""
    generator = torch.Generator().manual_seed(0)
    for start in range(0, frames, CHUNK_FRAMES):
        yield torch.randn(min(CHUNK_FRAMES, frames - start), 3, side, side, generator=generator)


def child(shapes, direction, path, frames):
    from storm_hf import StormModel

    torch.manual_seed(0)
    config = build_config(shapes, direction == "bidirectional")
    model = StormModel(config).eval()
    side = config.vision_config.image_size
    before = peak_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        if path == "one-shot":
            video = torch.cat(list(pixel_chunks(frames, side)))[None]  # (1, frames, 3, H, W)
            features = model.get_video_features(video).pooler_output[0]
        else:
            # the frame count known in advance, as StormProcessor.video_chunks knows it
            features = model.encode_video(pixel_chunks(frames, side), num_frames=frames,
                                          progress=False).pooler_output[0]
    dim = config.text_config.hidden_size
    print(json.dumps({"shapes": shapes, "direction": direction, "path": path, "frames": frames,
                      "seconds": time.perf_counter() - start, "peak_growth_mb": peak_mb() - before,
                      "visual_tokens": features.shape[0],
                      "projector_mb_per_frame": config.tokens_per_frame * dim * 4 / 2**20,
                      "reduced_mb_per_frame": features.shape[0] * dim * 4 / frames / 2**20}))


def write_hour_video(path, frames=3600, side=224):
    """A 1 fps H.264 file: a square that moves and changes colour every minute, written frame by frame."""
    import av
    import numpy as np

    colours = np.array([[220, 40, 40], [40, 200, 60], [40, 80, 220], [230, 200, 40]], np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.zeros((side, side, 3), np.uint8)
            x = (t * 3) % (side - 40)
            image[90:130, x:x + 40] = colours[(t // 60) % len(colours)]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def hour_child(video, direction):
    """An hour at 1 fps answered end to end with the chunked path; p = 2 keeps the prompt at 14,400 tokens."""
    from storm_hf import StormForConditionalGeneration, StormProcessor, StormVideoProcessor
    from storm_hf.inference import video_question_prompt
    from storm_hf.miniature.tiny import word_tokenizer

    torch.manual_seed(0)
    config = build_config("siglip224", direction == "bidirectional", llm_layers=2, spatial_pool_p=2)
    model = StormForConditionalGeneration(config).eval()
    tokenizer = word_tokenizer(["what", "colour", "is", "the", "square", "?"])
    model.set_generation_tokens(tokenizer)
    processor = StormProcessor.from_config(config, StormVideoProcessor(size={"height": 224, "width": 224}, fps=1.0,
                                                                       num_frames=None), tokenizer)
    before = peak_mb()
    start = time.perf_counter()
    chunks = processor.video_chunks(video, chunk_frames=64)
    features = model.encode_video(chunks, progress=False)
    encoded = time.perf_counter()
    prompt = video_question_prompt(processor, "what colour is the square ?")
    inputs = processor(text=prompt, video_num_frames=features.video_num_frames, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, mm_encoder_outputs={"video": features}, max_new_tokens=4, do_sample=False)
    answered = time.perf_counter()
    frames = int(features.video_num_frames[0])
    print(json.dumps({"direction": direction, "frames": frames, "visual_tokens": features.pooler_output[0].shape[0],
                      "prompt_tokens": inputs["input_ids"].shape[1],
                      "decode_and_encode_seconds": encoded - start, "ms_per_frame": (encoded - start) / frames * 1e3,
                      "llm_seconds": answered - encoded, "peak_growth_mb": peak_mb() - before,
                      "answer_tokens": out.shape[1] - inputs["input_ids"].shape[1]}))


def live_child(frames, asks, prefill):
    """A forward-only model fed one frame at a time (`StormLiveSession.push`): seconds per pushed frame over the
    stream, and the time to answer after N frames from the cached video against a full prefill of the same
    prompt (generate with features of the same length)."""
    import numpy as np

    from storm_hf import StormForConditionalGeneration, StormProcessor, StormVideoProcessor
    from storm_hf.inference import video_question_prompt
    from storm_hf.miniature.tiny import word_tokenizer

    torch.manual_seed(0)
    config = build_config("siglip224", bidirectional=False, llm_layers=4)
    model = StormForConditionalGeneration(config).eval()
    tokenizer = word_tokenizer(["what", "colour", "is", "the", "square", "?"])
    model.set_generation_tokens(tokenizer)
    processor = StormProcessor.from_config(config, StormVideoProcessor(size={"height": 224, "width": 224}), tokenizer)
    session = model.live_session(processor, prefill=prefill)
    question = "what colour is the square ?"
    rng = np.random.default_rng(0)
    push_seconds, answers = [], []
    for n in range(1, frames + 1):
        frame = rng.integers(0, 255, (1, 224, 224, 3), dtype=np.uint8)
        start = time.perf_counter()
        session.push(frame)
        push_seconds.append(time.perf_counter() - start)
        if n in asks:
            start = time.perf_counter()
            session.ask(question, max_new_tokens=4)
            cached = time.perf_counter() - start
            inputs = processor(text=video_question_prompt(processor, question), video_num_frames=[n],
                               return_tensors="pt")
            features = torch.randn(config.num_visual_tokens(n), config.text_config.hidden_size)
            start = time.perf_counter()
            with torch.inference_mode():
                model.generate(**inputs, mm_encoder_outputs={"video": StormVideoFeaturesLike(features)},
                               max_new_tokens=4, do_sample=False)
            full = time.perf_counter() - start
            answers.append({"frames": n, "prompt_tokens": inputs["input_ids"].shape[1], "ask_cached_s": cached,
                            "full_prefill_s": full})
    quarter = frames // 4
    first, last = push_seconds[:quarter], push_seconds[-quarter:]
    print(json.dumps({"prefill": prefill, "frames": frames, "ms_per_frame_first_quarter": 1e3 * sum(first) / len(first),
                      "ms_per_frame_last_quarter": 1e3 * sum(last) / len(last),
                      "last_over_first": sum(last) / sum(first), "asks": answers}))


def StormVideoFeaturesLike(features):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(pooler_output=[features])


def run(args):
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        print(f"{' '.join(args)}: failed\n{out.stderr[-3000:]}", flush=True)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="siglip224")
    parser.add_argument("--one-shot-up-to", type=int, default=4096, help="run the one-shot path up to this many frames")
    parser.add_argument("--directions", nargs="+", choices=["bidirectional", "forward-only"],
                        default=["bidirectional", "forward-only"])
    parser.add_argument("--hour", action="store_true", help="also answer a generated one-hour video at 1 fps")
    parser.add_argument("--hour-only", action="store_true", help="only the one-hour video")
    parser.add_argument("--live", type=int, default=0, metavar="FRAMES",
                        help="only the live session: push this many frames one by one (e.g. 2048)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--live-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--hour-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shapes, direction, path, frames = args.child
        return child(shapes, direction, path, int(frames))
    if args.hour_child:
        return hour_child(*args.hour_child)
    if args.live_child:
        frames, prefill = args.live_child
        frames = int(frames)
        return live_child(frames, {max(1, frames // 8), frames // 2, frames}, prefill)
    if args.live:
        print(f"torch {torch.__version__}, {os.cpu_count()} cores; live session, {args.live} frames pushed one by one")
        for prefill in ("push", "ask"):
            run(["--live-child", str(args.live), prefill])
        return None
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.shapes} shapes")
    results = []
    if not args.hour_only:
        for direction in args.directions:
            for path in ("one-shot", "chunked"):
                for frames in args.frames:
                    if path == "one-shot" and frames > args.one_shot_up_to:
                        continue
                    result = run(["--child", args.shapes, direction, path, str(frames)])
                    if result:
                        results.append(result)
        print("\n| direction | path | frames | peak growth MB | MB per frame | seconds | visual tokens |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['direction']} | {r['path']} | {r['frames']} | {r['peak_growth_mb']:.0f} | "
                  f"{r['peak_growth_mb'] / r['frames']:.3f} | {r['seconds']:.1f} | {r['visual_tokens']} |")
        print("\nGrowth per frame between the two largest frame counts, against the tokens each path must keep:")
        for direction in ("bidirectional", "forward-only"):
            for path in ("one-shot", "chunked"):
                runs = sorted((r for r in results if r["direction"] == direction and r["path"] == path),
                              key=lambda r: r["frames"])
                if len(runs) < 2:
                    continue
                a, b = runs[-2], runs[-1]
                slope = (b["peak_growth_mb"] - a["peak_growth_mb"]) / (b["frames"] - a["frames"])
                print(f"  {direction:13s} {path:8s} {slope * 1024:8.1f} KB/frame   (projector tokens "
                      f"{b['projector_mb_per_frame'] * 1024:.1f} KB/frame, reduced tokens "
                      f"{b['reduced_mb_per_frame'] * 1024:.1f} KB/frame)")
    if args.hour or args.hour_only:
        with tempfile.TemporaryDirectory() as folder:
            video = os.path.join(folder, "hour.mp4")
            start = time.perf_counter()
            write_hour_video(video)
            print(f"\nwrote a 3,600-frame 1 fps video (224 px) in {time.perf_counter() - start:.0f} s")
            for direction in ("forward-only", "bidirectional"):
                run(["--hour-child", video, direction])


if __name__ == "__main__":
    main()
