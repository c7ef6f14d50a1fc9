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
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.options = {"g": str(gop), "bf": str(bframes), "crf": "10"}
    if variable_rate:
        stream.codec_context.time_base = Fraction(1, 1000)
    t = 0
    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
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
