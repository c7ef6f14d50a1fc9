# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Reading chosen frames from video files with PyAV, exactly and without decoding the whole video.

Frame index i is the i-th frame in presentation order, as a full decode would number it. The reader
first *demuxes* the video stream (reads packet headers, decodes nothing) to learn every frame's
presentation timestamp and where the keyframes are; then, for each wanted frame, it seeks to the last
keyframe at or before it only when that keyframe lies beyond the frame being decoded, and decodes forward
to the exact timestamp. Only the wanted frames are converted to arrays and kept.

Policies (documented choices):
* A packet that fails to decode is skipped with a warning naming the file; a wanted frame lost that way
  is replaced by the next frame that decodes (warned too). A video from which no frame decodes raises.
* Asking for more frames than the video has returns every frame once (no frame is repeated).
* Timestamps are seconds from the first frame of the stream.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


class VideoReadError(ValueError):
    """A video could not be read. The message names the video and the reason."""


@dataclass(frozen=True)
class VideoIndex:
    """What demuxing tells about a video stream, without decoding it.

    frame_pts: (total_frames,) presentation timestamps in stream time-base units, in presentation order.
    keyframe_pts: sorted presentation timestamps of the keyframes.
    """

    frame_pts: np.ndarray
    keyframe_pts: np.ndarray
    time_base: Fraction
    width: int
    height: int

    @property
    def total_frames(self) -> int:
        return len(self.frame_pts)

    @property
    def timestamps(self) -> np.ndarray:
        """(total_frames,) seconds from the first frame."""
        return (self.frame_pts - self.frame_pts[0]) * float(self.time_base)

    @property
    def fps(self) -> float:
        """Average frame rate: frames per second over the stream's span (one frame's duration added)."""
        if self.total_frames < 2:
            return 0.0
        span = float(self.timestamps[-1])
        return (self.total_frames - 1) / span if span > 0 else 0.0

    @property
    def duration(self) -> float:
        fps = self.fps
        return float(self.timestamps[-1]) + (1.0 / fps if fps > 0 else 0.0)


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"<{type(source).__name__} video>"


def _open(source):
    """An av container for a path, bytes or a binary file-like object; VideoReadError otherwise."""
    import av

    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise VideoReadError(f"{name}: no such file.")
        if os.path.getsize(source) == 0:
            raise VideoReadError(f"{name}: the file is empty (0 bytes).")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise VideoReadError(f"{name}: the video bytes are empty.")
        source = io.BytesIO(bytes(source))
    elif not hasattr(source, "read"):
        raise VideoReadError(f"{name}: expected a path, bytes or a binary file-like object.")
    try:
        return av.open(source, mode="r")
    except av.error.FFmpegError as error:
        raise VideoReadError(f"{name}: not a readable video container ({error}).") from error


def _video_stream(container, name):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoReadError(f"{name}: the file has no video stream (streams: {', '.join(kinds)}).")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _index(container, stream, name) -> VideoIndex:
    """Demux the stream once (no decoding) and collect frame and keyframe timestamps."""
    import av

    pts, keyframes = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None:
                raise VideoReadError(f"{name}: a video packet has no presentation timestamp; cannot index frames.")
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
    except av.error.FFmpegError as error:
        if not pts:
            raise VideoReadError(f"{name}: the video stream cannot be read ({error}).") from error
        warnings.warn(f"{name}: demuxing stopped early ({error}); using the {len(pts)} frames before it.", stacklevel=3)
    if not pts:
        raise VideoReadError(f"{name}: the video stream has no frames.")
    frame_pts = np.sort(np.asarray(pts, dtype=np.int64))
    keyframe_pts = np.sort(np.asarray(keyframes or [frame_pts[0]], dtype=np.int64))
    return VideoIndex(frame_pts, keyframe_pts, stream.time_base, stream.codec_context.width, stream.codec_context.height)


def probe_video(source) -> VideoIndex:
    """Demux a video (no decoding) and return its `VideoIndex`: frame count, timestamps, fps, keyframes."""
    name = _describe(source)
    with _open(source) as container:
        return _index(container, _video_stream(container, name), name)


def sample_frame_indices(
    timestamps: np.ndarray, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None
) -> np.ndarray:
    """Frame indices to read.

    Args:
        timestamps: (total_frames,) seconds of every frame, increasing.
        num_frames: that many frames uniformly over the whole video (the centre of each of ``num_frames``
            equal segments); every frame once when the video has fewer.
        fps: one frame per ``1 / fps`` seconds (the frame nearest each instant, no repeats).
        max_frames: an upper bound applied after `num_frames` / `fps` (uniform thinning).
        With neither `num_frames` nor `fps`, every frame.
    Returns:
        Sorted int64 indices without repeats.
    """
    total = len(timestamps)
    if num_frames is not None and fps is not None:
        raise ValueError("Pass num_frames or fps, not both.")
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
        if num_frames >= total:
            indices = np.arange(total)
        else:
            indices = ((np.arange(num_frames) + 0.5) * total / num_frames).astype(np.int64)
    elif fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}.")
        instants = np.arange(0.0, float(timestamps[-1]) + 1e-9, 1.0 / fps)
        right = np.clip(np.searchsorted(timestamps, instants), 1, total - 1) if total > 1 else np.zeros(len(instants), int)
        left = right - 1 if total > 1 else right
        nearest = np.where(np.abs(timestamps[left] - instants) <= np.abs(timestamps[right] - instants), left, right)
        indices = np.unique(nearest)
    else:
        indices = np.arange(total)
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}.")
        if len(indices) > max_frames:
            indices = indices[((np.arange(max_frames) + 0.5) * len(indices) / max_frames).astype(np.int64)]
    return np.unique(indices.astype(np.int64))


def read_frames(source, indices, index: VideoIndex | None = None) -> tuple[np.ndarray, np.ndarray, VideoIndex]:
    """Decode exactly the frames at ``indices`` (any order, repeats allowed).

    Returns:
        frames: (len(indices), height, width, 3) uint8 RGB, in the order of ``indices``;
        timestamps: (len(indices),) seconds; the `VideoIndex` of the video.
    """
    import av

    name = _describe(source)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if isinstance(source, io.IOBase) and source.seekable():
        source.seek(0)
    with _open(source) as container:
        stream = _video_stream(container, name)
        if index is None:
            index = _index(container, stream, name)
        if len(indices) and (indices.min() < 0 or indices.max() >= index.total_frames):
            raise VideoReadError(
                f"{name}: frame indices must be in 0..{index.total_frames - 1}, got {indices.min()}..{indices.max()}."
            )
        wanted = np.unique(indices)
        pending = list(zip(wanted.tolist(), index.frame_pts[wanted].tolist()))  # (index, pts), ascending
        pending_pts = {pts for _, pts in pending}
        codec = stream.codec_context
        # Frames go straight into the output (a repeated index is decoded once and copied).
        out = np.empty((len(indices), index.height, index.width, 3), dtype=np.uint8)
        positions: dict[int, list[int]] = {}
        for position, i in enumerate(indices.tolist()):
            positions.setdefault(i, []).append(position)
        packets, queue = None, []
        keyframe_pos = -1  # position in index.keyframe_pts of the keyframe the decoder started from
        last_pts = None  # pts of the last frame decoded since that seek
        fresh_seek = False

        def seek(position):
            nonlocal packets, queue, keyframe_pos, last_pts, fresh_seek
            container.seek(int(index.keyframe_pts[position]), stream=stream, backward=True, any_frame=False)
            packets, queue, keyframe_pos, last_pts, fresh_seek = container.demux(stream), [], position, None, True

        while pending:
            target_index, target_pts = pending[0]
            target_keyframe = max(0, int(np.searchsorted(index.keyframe_pts, target_pts, side="right")) - 1)
            if packets is None or (last_pts is not None and last_pts >= target_pts) or target_keyframe > keyframe_pos:
                seek(target_keyframe)  # a later keyframe lets us skip decoding, or we must go back
            if not queue:
                frames = None
                for packet in packets:
                    # Frames no other frame refers to are skipped unless wanted: decoding stays exact.
                    codec.skip_frame = "DEFAULT" if packet.pts in pending_pts else "NONREF"
                    try:
                        frames = packet.decode()
                        break
                    except av.error.FFmpegError as error:
                        warnings.warn(f"{name}: skipped a video packet that failed to decode ({error}).", stacklevel=2)
                if frames is None:  # end of stream
                    raise VideoReadError(
                        f"{name}: frame {target_index} could not be decoded (the stream ends or is corrupt after it)."
                    )
                queue = [frame for frame in frames if frame.pts is not None]
                continue
            frame = queue.pop(0)
            if fresh_seek and frame.pts > target_pts and keyframe_pos > 0:
                seek(keyframe_pos - 1)  # the seek landed past the target: start from an earlier keyframe
                continue
            fresh_seek = False
            last_pts = frame.pts
            while keyframe_pos + 1 < len(index.keyframe_pts) and index.keyframe_pts[keyframe_pos + 1] <= frame.pts:
                keyframe_pos += 1  # decoded past the next keyframe: going on from here is as good as seeking
            while pending and pending[0][1] <= frame.pts:
                target_index, target_pts = pending.pop(0)
                pending_pts.discard(target_pts)
                if target_pts != frame.pts:
                    warnings.warn(f"{name}: frame {target_index} did not decode; using the next frame that did.",
                                  stacklevel=2)
                out[positions[target_index]] = frame.to_ndarray(format="rgb24")
    return out, index.timestamps[indices], index


__all__ = ["VideoReadError", "VideoIndex", "probe_video", "sample_frame_indices", "read_frames"]
