"""Small videos made with PyAV for the tests; each frame encodes its own index."""

from fractions import Fraction

import av
import numpy as np


def index_frame(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """(height, width, 3) uint8: the 8 bits of i as black/white columns, and a grey band of (37 i) % 256."""
    img = np.zeros((height, width, 3), np.uint8)
    for bit in range(8):
        if (i >> bit) & 1:
            img[:, bit * width // 8 : (bit + 1) * width // 8] = 255
    img[: height // 4] = (i * 37) % 256
    return img


def decode_index(frame: np.ndarray) -> int:
    """The index `index_frame` wrote (reads the bit columns below the grey band)."""
    height, width = frame.shape[:2]
    row = frame[height // 2]
    return sum(1 << bit for bit in range(8) if row[bit * width // 8 + width // 16].mean() > 127)


def make_video(path, num_frames=60, fps=24, gop=12, bframes=2, variable_rate=False, audio=False):
    """An H.264 .mp4 of `index_frame`s. variable_rate: frame gaps alternate 70 ms / 30 ms / 30 ms."""
    return _encode_index_frames(path, None, "libx264", {"g": str(gop), "bf": str(bframes), "crf": "10"},
                                num_frames, fps, variable_rate)


def _encode_index_frames(path, fmt, codec, options, num_frames, fps, variable_rate, width=64, height=48):
    """`num_frames` `index_frame`s encoded with `codec` into `path` (container `fmt`, or by the suffix)."""
    container = av.open(str(path), mode="w", format=fmt)
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    if options:
        stream.options = dict(options)
    if variable_rate:
        stream.codec_context.time_base = Fraction(1, 1000)
    t = 0
    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(index_frame(i, width, height), format="rgb24")
        if variable_rate:
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += 70 if i % 3 == 0 else 30
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def make_audio_only(path, seconds=1.0):
    container = av.open(str(path), mode="w")
    stream = container.add_stream("aac", rate=16000)
    samples = int(16000 * seconds)
    frame_size = 1024
    for start in range(0, samples, frame_size):
        data = np.zeros((1, frame_size), np.float32)
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def full_decode(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# Containers and codecs the reader is checked on: name -> (container format, file suffix, codec, options).
FORMATS = {
    "mpeg2_ps_open_gop": ("mpeg", ".mpg", "mpeg2video", {"g": "12", "bf": "2"}),
    "mpeg2_ps_closed_gop": ("mpeg", ".mpg", "mpeg2video",
                            {"g": "12", "bf": "2", "flags": "+cgop", "sc_threshold": "1000000000"}),
    "mpeg2_ts": ("mpegts", ".ts", "mpeg2video", {"g": "12", "bf": "2"}),
    "mpeg4_avi": ("avi", ".avi", "mpeg4", {"g": "12", "bf": "2"}),
    "vp9_webm": ("webm", ".webm", "libvpx-vp9", {"g": "12", "deadline": "realtime", "cpu-used": "8"}),
    "h264_mkv": ("matroska", ".mkv", "libx264", {"g": "12", "bf": "2"}),
    "h264_mov": ("mov", ".mov", "libx264", {"g": "12", "bf": "2"}),
    "h264_open_gop_mp4": ("mp4", ".mp4", "libx264",
                          {"bf": "2", "x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0"}),
    "h264_ts": ("mpegts", ".ts", "libx264", {"g": "12", "bf": "2"}),
    "hevc_mp4": ("mp4", ".mp4", "libx265", {"g": "12", "bf": "2", "x265-params": "log-level=error"}),
    "mjpeg_avi": ("avi", ".avi", "mjpeg", None),
    "h264_raw": ("h264", ".h264", "libx264", {"g": "12", "bf": "2"}),
}


def make_format_video(path, kind, num_frames=60, fps=25, variable_rate=False, width=64, height=48):
    """A video of `index_frame`s in one of `FORMATS`. variable_rate: gaps alternate 70 / 30 / 30 ms."""
    fmt, _, codec, options = FORMATS[kind]
    return _encode_index_frames(path, fmt, codec, options, num_frames, fps, variable_rate, width, height)


def remux(source, path, keep=lambda position, packet: True):
    """Copy the video packets of `source` into `path` (same container format) where keep(position, packet),
    position counting video packets in decode order. Cutting before a keyframe of an open GOP leaves its
    leading B-frames without their references, as in a stream cut out of a broadcast."""
    with av.open(str(source)) as inp:
        fmt = inp.format.name.split(",")[0]
        with av.open(str(path), mode="w", format=fmt) as out:
            stream = out.add_stream_from_template(inp.streams.video[0])
            position = 0
            for packet in inp.demux(inp.streams.video[0]):
                if packet.size == 0:
                    continue
                if keep(position, packet):
                    packet.stream = stream
                    try:
                        out.mux(packet)
                    except av.error.FFmpegError:
                        pass  # a muxer refusing a packet after a gap (non-increasing dts): left out too
                position += 1
    return path


def cut_before_keyframe(source, path, keyframe_number=1):
    """`remux` from the `keyframe_number`-th keyframe packet on (decode order)."""
    state = {"keys": -1, "started": False}

    def keep(position, packet):
        if packet.is_keyframe:
            state["keys"] += 1
        state["started"] = state["started"] or state["keys"] >= keyframe_number
        return state["started"]

    return remux(source, path, keep)


def robust_full_decode(source):
    """{pts: (height, width, 3) frame} of every frame a decode from the start gives, skipping packets that
    fail to decode (the reference for damaged files; `full_decode` stops at the first error)."""
    frames = {}
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets, None)
            except av.error.FFmpegError:
                packet = None
            try:
                decoded = packet.decode() if packet is not None else stream.codec_context.decode(None)
            except av.error.FFmpegError:
                decoded = []
            for frame in decoded:
                if frame.pts is not None:
                    frames[frame.pts] = frame.to_ndarray(format="rgb24")
            if packet is None or packet.size == 0:
                return frames
