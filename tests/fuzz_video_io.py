"""Fuzzing the video reader with damaged files.

    python -m tests.fuzz_video_io                  # the full set: 400 seeded cases (about 2 minutes)
    python -m tests.fuzz_video_io --cases 2000 --seed 7

Small valid files of several containers and codecs (and still images) are damaged in seeded ways:
truncated at a random offset, random bytes flipped in the header or in the middle, packets dropped
(remuxed without them), a byte range zeroed. Each case is read with `probe_video` and `read_frames`
in a worker process, and must end within `--time-limit` seconds (5 by default) with either frames or a
`VideoReadError`: never another exception type, a crash of the process, a hang or a leaked file
descriptor. Returned frames must have the right shape, and must equal the undamaged file's frame at
the same timestamp wherever the damage did not touch that frame (every packet of its GOP, up to the next keyframe,
is byte-identical to the undamaged file's). `tests/test_video_fuzz.py` runs a seeded subset in the default suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

# Base files: (name, video_factory kind or image suffix, frames, variable frame rate).
BASES = [
    ("mpeg2_ps", "mpeg2_ps_open_gop", 40, False),
    ("h264_mp4_open_gop", "h264_open_gop_mp4", 40, False),
    ("h264_mkv_vfr", "h264_mkv", 40, True),
    ("h264_mov", "h264_mov", 30, False),
    ("h264_ts", "h264_ts", 30, False),
    ("vp9_webm", "vp9_webm", 30, False),
    ("mpeg4_avi", "mpeg4_avi", 30, False),
    ("mjpeg_avi", "mjpeg_avi", 12, False),
    ("png", ".png", 1, False),
    ("jpeg", ".jpg", 1, False),
]
MUTATIONS = ("truncate", "flip_header", "flip_middle", "drop_packets", "zero_range")


def make_bases(root: Path) -> dict[str, Path]:
    from PIL import Image

    from .video_factory import FORMATS, index_frame, make_format_video

    paths = {}
    for name, kind, frames, vfr in BASES:
        if kind.startswith("."):
            path = root / f"{name}{kind}"
            Image.fromarray(index_frame(7)).save(path)
        else:
            path = make_format_video(root / f"{name}{FORMATS[kind][1]}", kind, num_frames=frames, variable_rate=vfr)
        paths[name] = path
    return paths


def make_case(number: int, seed: int, bases: dict[str, Path], root: Path) -> dict:
    """One damaged file, written under `root`; returns its description."""
    from .video_factory import remux

    rng = np.random.default_rng([seed, number])
    base = list(bases)[number % len(bases)]
    mutation = MUTATIONS[(number // len(bases)) % len(MUTATIONS)]
    source = bases[base]
    data = bytearray(source.read_bytes())
    path = root / f"case{number:05d}{source.suffix}"
    detail = ""
    if mutation == "truncate":
        cut = int(rng.integers(1, len(data)))
        data = data[:cut]
        detail = f"kept {cut} of {len(source.read_bytes())} bytes"
    elif mutation in ("flip_header", "flip_middle"):
        span = (0, min(len(data), 1024)) if mutation == "flip_header" else (len(data) // 4, 3 * len(data) // 4)
        count = int(rng.integers(1, 9))
        offsets = rng.integers(span[0], max(span[0] + 1, span[1]), count)
        for offset in offsets:
            data[offset] ^= int(rng.integers(1, 256))
        detail = f"flipped bytes at {sorted(offsets.tolist())}"
    elif mutation == "zero_range":
        start = int(rng.integers(0, len(data)))
        length = int(rng.integers(1, max(2, len(data) // 8)))
        data[start : start + length] = bytes(len(data[start : start + length]))
        detail = f"zeroed {length} bytes at {start}"
    if mutation == "drop_packets" and base not in ("png", "jpeg"):
        total = sum(1 for _ in _packet_sizes(source))
        dropped = set(rng.choice(total, size=int(rng.integers(1, max(2, total // 5))), replace=False).tolist())
        remux(source, path, keep=lambda position, packet: position not in dropped)
        detail = f"dropped packets {sorted(dropped)}"
    else:
        if mutation == "drop_packets":  # an image has one packet: drop its second half instead
            data = data[: len(data) // 2]
            detail = "image cut in half"
        path.write_bytes(bytes(data))
    return {"number": number, "base": base, "mutation": mutation, "detail": detail, "path": str(path),
            "original": str(source), "seed": seed}


def _packet_sizes(path):
    import av

    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                yield packet.size


# ----------------------------------------------------------------------------------------------------
# The worker: reads cases, one JSON line per case on stdout
# ----------------------------------------------------------------------------------------------------


def _open_descriptors() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd")) if os.path.isdir(f"/proc/{os.getpid()}/fd") else 0


def _reference(path) -> dict:
    """{pts: frame} from a decode from the start that skips packets that fail (None for images)."""
    from .video_factory import robust_full_decode

    try:
        return robust_full_decode(str(path))
    except Exception:  # the reference itself may not open a damaged file
        return {}


def check_case(case: dict, on_read=lambda: None) -> dict:
    """Read one damaged file as a user would; return what happened (status ok/error/fail). `on_read` is
    called when the reader's calls are over, before the (slower) comparison with reference decodes."""
    import storm_hf.video_io as video_io

    rng = np.random.default_rng([case["seed"], case["number"], 1])
    before = _open_descriptors()
    started = time.perf_counter()
    outcome = {"number": case["number"]}
    replaced: list[int] = []
    real_seeking, real_in_order = video_io._read_by_seeking, video_io._read_in_order
    real_min_frames = video_io.MIN_FRAMES_PER_WORKER
    # Odd cases are read by 3 parallel decoders (split even for the few frames of these files), even by one.
    workers = 3 if case["number"] % 2 else 1
    video_io.MIN_FRAMES_PER_WORKER = 2

    def seeking(*args):
        out = real_seeking(*args)
        replaced.extend(out)
        return out

    video_io._read_by_seeking = seeking
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index = video_io.probe_video(case["path"])
            requests = [rng.integers(0, index.total_frames, 5), np.arange(index.total_frames),
                        [index.total_frames - 1]]
            results = []
            for indices in requests:
                try:
                    frames, timestamps, _ = video_io.read_frames(case["path"], indices, index=index, workers=workers)
                except video_io.VideoReadError as error:
                    results.append(("error", str(error)))
                    continue
                problem = _check_frames(frames, timestamps, indices, index)
                if problem:
                    return {**outcome, "status": "fail", "reason": problem}
                results.append(("frames", frames, indices))
        outcome["seconds"] = round(time.perf_counter() - started, 3)
        on_read()
        outcome["status"] = "ok"
        outcome["errors"] = sum(r[0] == "error" for r in results)
        mismatch = _check_exact(case, index, results, set(replaced))
        if mismatch:
            return {**outcome, "status": "fail", "reason": mismatch}
    except video_io.VideoReadError as error:
        outcome.update(status="error", message=str(error)[:200])
        on_read()
        if not str(error).startswith(str(case["path"])):
            return {**outcome, "status": "fail", "reason": f"the error does not name the file: {error}"}
    except Exception as error:  # any other exception type is a failure
        return {**outcome, "status": "fail",
                "reason": f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}"}
    finally:
        video_io._read_by_seeking, video_io._read_in_order = real_seeking, real_in_order
        video_io.MIN_FRAMES_PER_WORKER = real_min_frames
        outcome.setdefault("seconds", round(time.perf_counter() - started, 3))
    gc.collect()
    after = _open_descriptors()
    if after != before:
        return {**outcome, "status": "fail", "reason": f"file descriptors {before} -> {after}"}
    return outcome


def _check_frames(frames, timestamps, indices, index) -> str | None:
    expected = (len(indices), index.height, index.width, 3)
    if frames.shape != expected or frames.dtype != np.uint8:
        return f"frames {frames.shape} {frames.dtype}, expected {expected} uint8"
    if len(timestamps) != len(indices) or not np.all(np.isfinite(timestamps)):
        return f"timestamps {timestamps!r}"
    return None


def _packets(path) -> dict:
    """{pts: (CRC-32 of the bytes, is keyframe)} of the video packets a demux gives (as far as it gets), and
    under the key "header" what else the decoder is given: the codec's extradata (e.g. H.264's SPS/PPS in
    MP4 and MKV headers), frame size and pixel format."""
    import zlib

    import av

    packets = {}
    try:
        with av.open(str(path)) as container:
            codec = container.streams.video[0].codec_context
            packets["header"] = (zlib.crc32(codec.extradata or b""), codec.width, codec.height, codec.pix_fmt)
            for packet in container.demux(container.streams.video[0]):
                if packet.size and packet.pts is not None:
                    packets[packet.pts] = (zlib.crc32(memoryview(packet)), bool(packet.is_keyframe))
    except Exception:  # a damaged file may stop demuxing anywhere
        pass
    return packets


def _untouched(original: dict, damaged: dict) -> set:
    """Timestamps of the frames whose every reference is undamaged: the whole GOP around them, up to and
    including the next keyframe, has the same packet bytes in both files, and the headers agree."""
    if not original or original.pop("header", None) != damaged.pop("header", None):
        return set()
    order = sorted(original)
    keyframes = [pts for pts in order if original[pts][1]]
    clean = set()
    for start, end in zip(keyframes, keyframes[1:] + [order[-1] + 1]):
        span = [pts for pts in order if start <= pts <= end]
        if all(pts in damaged and damaged[pts][0] == original[pts][0] for pts in span):
            clean.update(pts for pts in span if pts < end or end == order[-1] + 1)
    return clean


def _check_exact(case, index, results, replaced) -> str | None:
    """Frames the damage did not touch equal the undamaged file's frame at the same timestamp."""
    if index.is_image:
        return None  # a damaged image that still decodes: Pillow's pixels, nothing to compare by timestamp
    untouched = _untouched(_packets(case["original"]), _packets(case["path"]))
    original = _reference(case["original"])
    for result in results:
        if result[0] != "frames":
            continue
        _, frames, indices = result
        for frame, i in zip(frames, np.asarray(indices).tolist()):
            pts = int(index.frame_pts[i])
            if i in replaced or pts not in untouched or pts not in original:
                continue
            if frame.shape != original[pts].shape:
                return f"frame {i}: shape {frame.shape} vs {original[pts].shape}"
            if not np.array_equal(frame, original[pts]):
                return f"frame {i} (pts {pts}) differs from the undamaged file's frame at that timestamp"
    return None


def worker():
    """Reads cases (JSON lines) from stdin; for each prints {"started": n}, {"read": n} once the reader's calls
    are over, then the outcome. A case may carry "inject": "hang" or "crash", to check the driver itself."""
    import av  # noqa: F401  (imports before the first case's clock starts)

    import storm_hf.video_io  # noqa: F401

    for line in sys.stdin:
        case = json.loads(line)
        print(json.dumps({"started": case["number"]}), flush=True)
        if case.get("inject") == "hang":
            time.sleep(3600)
        if case.get("inject") == "crash":
            os.kill(os.getpid(), 11)
        outcome = check_case(case, on_read=lambda: print(json.dumps({"read": case["number"]}), flush=True))
        print(json.dumps(outcome), flush=True)


# ----------------------------------------------------------------------------------------------------
# The driver: runs a worker process, watches the time of each case, restarts it after a crash or hang
# ----------------------------------------------------------------------------------------------------

STARTUP_SECONDS = 120  # a worker's imports, before its first case
REFERENCE_SECONDS = 120  # the reference decodes of one case, after the reader is done


def run_cases(cases: list[dict], time_limit: float = 5.0) -> list[dict]:
    """Each case's outcome; hangs (no answer within `time_limit` s) and crashes are outcomes too (status fail)."""
    outcomes, todo = [], list(cases)
    root = Path(__file__).resolve().parents[1]
    while todo:
        process = subprocess.Popen([sys.executable, "-m", "tests.fuzz_video_io", "--worker"], cwd=root,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        try:
            for case in todo:
                process.stdin.write(json.dumps(case) + "\n")
            process.stdin.close()
            wait = STARTUP_SECONDS
            while todo:
                case = todo[0]
                line = _read_line(process, time.monotonic() + wait)
                if not line:
                    outcomes.append({"number": case["number"], "status": "fail",
                                     "reason": _dead_or_hung(process, line, wait)})
                    todo.pop(0)
                    break  # restart a worker for the rest
                message = json.loads(line)
                if "started" in message:
                    wait = time_limit
                    continue
                if "read" in message:
                    wait = REFERENCE_SECONDS
                    continue
                todo.pop(0)
                wait = time_limit  # the next case's "started" follows at once
                if message.get("status") != "fail" and message.get("seconds", 0) > time_limit:
                    message.update(status="fail", reason=f"took {message['seconds']} s")
                outcomes.append(message)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
    return outcomes


def _read_line(process, deadline):
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if ready:
            return process.stdout.readline()  # "" at end of file: the worker died


def _dead_or_hung(process, line, seconds):
    if line is None:  # no answer in time
        process.kill()
        return f"no answer within {seconds} s (hang)"
    return f"the worker process died with exit code {process.wait()} (crash)"


def fuzz(cases: int = 400, seed: int = 0, time_limit: float = 5.0, root: Path | None = None) -> list[dict]:
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="storm-fuzz-")) if owned else root
    bases = make_bases(root)
    specs = [make_case(n, seed, bases, root) for n in range(cases)]
    outcomes = run_cases(specs, time_limit)
    by_number = {spec["number"]: spec for spec in specs}
    for outcome in outcomes:
        outcome["case"] = by_number[outcome["number"]]
    return outcomes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=5.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker()
    started = time.perf_counter()
    outcomes = fuzz(args.cases, args.seed, args.time_limit)
    failures = [o for o in outcomes if o["status"] == "fail"]
    counts = {s: sum(o["status"] == s for o in outcomes) for s in ("ok", "error", "fail")}
    slowest = max(outcomes, key=lambda o: o.get("seconds", 0))
    print(f"{len(outcomes)} cases in {time.perf_counter() - started:.0f} s: {counts['ok']} read (frames or "
          f"VideoReadError per request), {counts['error']} refused with VideoReadError, {counts['fail']} failed; "
          f"slowest case {slowest.get('seconds')} s")
    for failure in failures:
        case = failure["case"]
        print(f"FAIL case {case['number']} ({case['base']}, {case['mutation']}: {case['detail']}): {failure['reason']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
