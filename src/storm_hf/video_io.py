# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Reading chosen frames from video files with PyAV, exactly and without decoding the whole video.

Frame index i is the i-th frame in presentation order, as a full decode (`container.decode(video=0)`)
numbers it. The reader first *demuxes* the video stream (reads packet headers; decodes the first packets
only when some are shown before the first keyframe, or the header gives no frame size) to learn every
frame's presentation timestamp (pts), the packets in decode order and where the keyframes are; then, for
each wanted frame, it seeks to the last keyframe at or before it (only when that skips work) and decodes
forward to the exact timestamp. Only the wanted frames are converted to arrays and kept.

Why this is exact, and why it always ends:
* Frames are identified by their pts, never by counting after a seek. After a seek the reader recognises
  the first keyframe packet in its index (size and CRC-32), checks every later packet against the index
  and re-stamps it with the index's timestamps (program streams report others after a seek). Nothing is
  trusted until the decoder outputs a keyframe; frames before that keyframe in presentation order
  (open-GOP leading pictures, whose references lie before the seek point) are dropped.
* A seek that lands after the wanted frame (MPEG program streams seek by byte position, and land where
  they land) is retried from one and then two keyframes earlier, and then by decoding forward from the
  start of the file, which is a full decode and needs no seeking. Once decoding from the start was
  needed, the rest of the call goes on forward from there: every step of the escalation is tried at most
  once per frame, so each wanted frame is either delivered or declared lost after a bounded amount of work,
  and the whole call decodes at most a fixed multiple of the file's packets (`VideoReadError` beyond).
* Files whose packets lack timestamps, or share them (raw elementary streams, some broken files), cannot
  be seeked exactly: they are read by decoding from the start and numbering the frames as they come.

Parallel decoding: the wanted frames are cut, only where a keyframe lies between two of them, into
contiguous ranges of about equal decoding work, one per core (`read_frames(workers=...)`); each range is read
as above by its own single-threaded decoder on its own container, on its own thread (FFmpeg releases the GIL
while it decodes). No group of pictures is decoded by two workers, so the work is the same as one decoder's,
spread over the cores; the first failure stops the other workers. One decoder with FFmpeg's frame threads
is slower here: its pipeline is refilled after every seek (benchmarks/RESULTS.md).

Policies (documented choices):
* A packet that fails to decode is skipped (one warning per call names the file and the count); a wanted
  frame lost that way is replaced by the next frame that decodes (warned too). A wanted frame after the
  last frame that decodes, or a video from which no frame decodes, raises `VideoReadError`.
* Frames that a full decode never outputs (leading pictures of an open GOP at the very start of a cut
  stream, packets the container marks as discarded) are not counted as frames.
* Asking for more frames than the video has returns every frame once (no frame is repeated).
* Timestamps are seconds from the first frame of the stream.
* A still image file (JPEG, PNG, WebP, BMP, TIFF, a one-frame GIF, ...) is a one-frame video: it is read
  with Pillow and turned upright by its EXIF orientation, as an image viewer shows it. Animated GIF / WebP /
  APNG files are videos.
* A frame whose size differs from the first frame's (a resolution change mid-stream) is scaled to the first
  frame's size, so that every call returns one array.
* A source may be a URL string: http:// and https:// videos are downloaded whole, once per call, into a
  temporary file that is removed when the call ends (`local_source`, `download_video`); file:// URLs are local
  paths. Other schemes (ftp, s3, rtsp, data: ...) are refused by name.
* Long decodes show a progress bar on an interactive terminal (`progress=None`), after one second; pass
  `progress=False`, or call `transformers.utils.logging.disable_progress_bar()`, to turn it off. A callable
  `progress(done, total)` is told instead (a web page's progress, say).
"""

from __future__ import annotations

import io
import os
import re
import sys
import warnings
import weakref
import zlib
from contextlib import contextmanager
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
    seekable: False when frames cannot be identified by timestamp (packets without or with repeated
        timestamps); such videos are read by decoding from the start.
    is_image: a still image file read as a one-frame video.
    packet_pts, packet_dts, packet_sizes: (num_packets,) int64 per video packet in decode order (dts is
        `NO_TIMESTAMP` where the container gives none); packet_crc: (num_packets,) CRC-32 of each keyframe
        packet's bytes (-1 for the other packets). After a seek the reader recognises where it landed from these,
        whatever timestamps the demuxer then reports.
    """

    frame_pts: np.ndarray
    keyframe_pts: np.ndarray
    time_base: Fraction
    width: int
    height: int
    seekable: bool = True
    is_image: bool = False
    packet_pts: np.ndarray | None = None
    packet_dts: np.ndarray | None = None
    packet_sizes: np.ndarray | None = None
    packet_crc: np.ndarray | None = None

    @property
    def num_packets(self) -> int:
        """Video packets in the stream (the unit of the reader's work bound)."""
        return self.total_frames if self.packet_sizes is None else len(self.packet_sizes)

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


NO_TIMESTAMP = np.iinfo(np.int64).min  # packet_dts where the container gives no decode timestamp
PROGRESS_DELAY = 1.0  # seconds a decode runs before its progress bar shows
# Frames larger than this (pixels) are refused: a corrupt header must not make us allocate gigabytes.
MAX_FRAME_PIXELS = 1 << 27  # 134 M pixels, e.g. 16384 x 8192
# Work bound of one read_frames call: packets decoded, as a multiple of the stream's packets (plus a constant).
WORK_BOUND_FACTOR = 6
WORK_BOUND_EXTRA = 256
# Packets decoded from the start while indexing, to find the frames a full decode never outputs.
_PROBE_PACKETS = 64
# Pillow formats read as still images (Pillow also recognises MPEG video headers, which must stay videos).
_STILL_IMAGE_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "JPEG2000", "TGA", "ICO", "QOI",
                        "PCX", "SGI", "DDS", "AVIF", "HEIF"}


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"<{type(source).__name__} video>"


def _check_source(source, name):
    """Early, specific errors for missing and empty inputs; bytes become a file object."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise VideoReadError(f"{name}: no such file.")
        if os.path.isdir(source):
            raise VideoReadError(f"{name}: is a folder, not a video file.")
        if os.path.getsize(source) == 0:
            raise VideoReadError(f"{name}: the file is empty (0 bytes).")
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise VideoReadError(f"{name}: the video bytes are empty.")
        return io.BytesIO(bytes(source))
    if not hasattr(source, "read"):
        raise VideoReadError(f"{name}: expected a path, a URL, bytes or a binary file-like object.")
    return source


# ----------------------------------------------------------------------------------------------------
# URLs
# ----------------------------------------------------------------------------------------------------

# http(s) videos are downloaded whole into a temporary file before anything is read, rather than streamed by
# FFmpeg: the index demuxes the whole stream anyway (every byte crosses the network once either way), and a
# local copy is then read like any file: still images (Pillow cannot open a URL), exact seeks, and the
# parallel decoding workers, which each open their own container (streaming would fetch every worker's range
# and every seek over the network again). Live streams (rtsp, rtmp, ...) never end, so they cannot be indexed.
URL_SCHEMES = ("http", "https", "file")
URL_TIMEOUT = 30.0  # seconds without an answer (connecting, or between two reads) before a download gives up
MAX_DOWNLOAD_BYTES = 8 << 30  # 8 GiB: a larger (or endless) download stops instead of filling the disk
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(//)?")  # a scheme of 2+ letters: C:\clip.mp4 is a path


def _url_scheme(source) -> str | None:
    """The scheme (lower case) of a video given as a URL string, or None for anything else."""
    match = _URL.match(source) if isinstance(source, str) else None
    if match is None:
        return None
    scheme = match.group(1).lower()
    if match.group(2) or (scheme == "data" and not os.path.exists(source)):  # "data:" URLs have no "//"
        return scheme
    return None


def check_url(source) -> None:
    """Raise `VideoReadError` when ``source`` is a URL that cannot be read (a scheme other than http, https
    and file, or a file:// URL naming another host); anything else passes."""
    scheme = _url_scheme(source)
    if scheme not in URL_SCHEMES:
        if scheme is None:
            return  # not a URL
        hint = " (pass the decoded bytes instead)" if scheme == "data" else ""
        raise VideoReadError(f"{source}: {scheme}: URLs are not supported{hint}; give a local path, or an "
                             f"{', '.join(f'{s}://' for s in URL_SCHEMES[:-1])} or {URL_SCHEMES[-1]}:// URL.")
    if scheme != "file":
        return
    import urllib.parse

    host = urllib.parse.urlsplit(source).netloc
    if host not in ("", "localhost"):
        raise VideoReadError(f"{source}: a file:// URL must name a file on this machine (file:///path/to/video.mp4), "
                             f"not on {host}.")


def _file_url_path(url: str) -> str:
    """The local path of a file:// URL, percent-decoded (file:///tmp/my%20clip.mp4 -> /tmp/my clip.mp4)."""
    import urllib.parse
    import urllib.request

    return urllib.request.url2pathname(urllib.parse.urlsplit(url).path)


def _remove_file(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class DownloadedVideo(os.PathLike):
    """A video downloaded from ``url`` into the temporary file ``path``: read as that file, named by its URL
    (``str()``, so messages name the URL). `close()` (or leaving a ``with`` block, or garbage collection)
    removes the file."""

    def __init__(self, url: str, path: str):
        self.url, self.path = url, path
        self._remove = weakref.finalize(self, _remove_file, path)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"DownloadedVideo({self.url!r}, {self.path!r})"

    def close(self):
        self._remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _network_reason(error, timeout) -> str:
    """The reason of a failed request, without Python's wrapping ("<urlopen error [Errno 111] ...>")."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer from the server within {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror  # "Connection refused", "Name or service not known", ...
    return str(reason) or type(reason).__name__


def download_video(url: str, timeout: float | None = None) -> DownloadedVideo:
    """Download the http(s) ``url`` whole into a temporary file. Raises `VideoReadError` naming the URL when
    the server cannot be reached, answers with an error status, sends nothing for ``timeout`` seconds
    (`URL_TIMEOUT` by default), closes the connection before the end, or sends more than `MAX_DOWNLOAD_BYTES`."""
    import http.client
    import tempfile
    import urllib.error
    import urllib.parse
    import urllib.request

    timeout = URL_TIMEOUT if timeout is None else timeout
    request = urllib.request.Request(url, headers={"User-Agent": "storm_hf"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # the timeout bounds each socket wait
    except urllib.error.HTTPError as error:
        raise VideoReadError(f"{url}: the server answered {error.code} {error.reason}.") from None
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError is an OSError
        raise VideoReadError(f"{url}: cannot be downloaded ({_network_reason(error, timeout)}).") from error
    with response:
        try:
            expected = int(response.headers.get("Content-Length"))
        except (TypeError, ValueError):
            expected = None  # not given (chunked): the end of the data is the end of the video
        if expected is not None and expected > MAX_DOWNLOAD_BYTES:
            raise VideoReadError(f"{url}: the video is {expected} bytes, more than the {MAX_DOWNLOAD_BYTES} bytes "
                                 "downloaded at most; download it yourself and give its path.")
        suffix = os.path.splitext(urllib.parse.urlsplit(url).path)[1][:16]
        file = tempfile.NamedTemporaryFile(prefix="storm-hf-", suffix=suffix, delete=False)
        video = DownloadedVideo(url, file.name)
        received = 0
        try:
            with file:
                while chunk := response.read(1 << 20):
                    received += len(chunk)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise VideoReadError(f"{url}: more than the {MAX_DOWNLOAD_BYTES} bytes downloaded at "
                                             "most; download it yourself and give its path.")
                    file.write(chunk)
            # http.client ends a read quietly when the server closes early: the length given is the check.
            if expected is not None and received < expected:
                raise VideoReadError(f"{url}: the download stopped after {received} of {expected} bytes (the "
                                     "server closed the connection).")
        except (OSError, http.client.HTTPException) as error:  # a timeout, a reset, a broken chunked answer
            video.close()
            raise VideoReadError(f"{url}: the download stopped after {received} bytes "
                                 f"({_network_reason(error, timeout)}).") from error
        except BaseException:  # our VideoReadError above, KeyboardInterrupt: no partial file left behind
            video.close()
            raise
    return video


@contextmanager
def local_source(source):
    """``source`` as something that can be read more than once, for the duration of the ``with`` block: an
    http(s) URL downloaded once into a temporary file (a `DownloadedVideo`, removed when the block ends), a
    file:// URL as its local path, anything else as it is. Any other URL raises `VideoReadError`."""
    check_url(source)
    scheme = _url_scheme(source)
    if scheme in ("http", "https"):
        with download_video(source) as video:
            yield video
    elif scheme == "file":
        yield _file_url_path(source)
    else:
        yield source


def _rewind(source):
    if hasattr(source, "seek") and (not hasattr(source, "seekable") or source.seekable()):
        source.seek(0)


def _open(source, name):
    """An av container for a checked source (path or file object); VideoReadError otherwise."""
    import av

    _rewind(source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)  # av.open takes str and pathlib paths, not every os.PathLike (DownloadedVideo)
    try:
        return av.open(source, mode="r")
    except av.error.FFmpegError as error:
        reason = getattr(error, "strerror", None) or error  # FFmpeg's reason, without its error number and path
        raise VideoReadError(f"{name}: not a readable video container ({reason}).") from error
    except (OSError, ValueError, TypeError, EOFError, OverflowError) as error:
        raise VideoReadError(f"{name}: cannot be opened ({type(error).__name__}: {error}).") from error


def _next_packet(packets):
    """The next demuxed packet, or None at the end or when the demuxer gives up on damaged data."""
    import av

    try:
        return next(packets, None)
    except av.error.FFmpegError:
        return None


def _decode(packet, codec):
    """Frames decoded from ``packet`` (None: flush the decoder), and whether decoding failed."""
    import av

    try:
        return (packet.decode() if packet is not None else codec.decode(None)), False
    except av.error.FFmpegError:
        return [], True


def _video_stream(container, name, thread_type="AUTO"):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoReadError(f"{name}: the file has no video stream (streams: {', '.join(kinds)}).")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        codec = getattr(getattr(stream, "codec", None), "name", None) or "unknown"
        raise VideoReadError(f"{name}: the video codec ({codec}) cannot be decoded (unknown, unsupported or a "
                             "corrupt header).")
    stream.thread_type = thread_type
    return stream


# ----------------------------------------------------------------------------------------------------
# Still images
# ----------------------------------------------------------------------------------------------------


def _still_image(source):
    """A Pillow image when ``source`` is a still image file (not a video, not an animation), else None."""
    from PIL import Image

    _rewind(source)
    try:
        image = Image.open(source)
    except Exception:  # not an image Pillow knows (UnidentifiedImageError), or damaged beyond its header
        return None
    if image.format not in _STILL_IMAGE_FORMATS or (image.format != "MPO" and getattr(image, "n_frames", 1) > 1):
        image.close()
        return None
    return image


def load_image(source, name=None) -> np.ndarray:
    """A still image file as a (height, width, 3) uint8 RGB array, upright by its EXIF orientation."""
    from PIL import ImageOps

    name = name or _describe(source)
    with local_source(source) as source:
        image = _still_image(_check_source(source, name))
        if image is None:
            raise VideoReadError(f"{name}: not a readable still image.")
        try:
            with image:
                upright = ImageOps.exif_transpose(image)
                array = np.asarray(upright.convert("RGB"))
        except Exception as error:  # Pillow raises many types on damaged data (OSError, struct.error, zlib.error, ...)
            raise VideoReadError(f"{name}: the image data is corrupt ({type(error).__name__}: {error}).") from error
    if array.ndim != 3 or array.shape[0] * array.shape[1] == 0:
        raise VideoReadError(f"{name}: the image is empty.")
    return array


def _image_index(image, name) -> VideoIndex:
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    except Exception as error:  # Pillow raises many types on damaged data
        raise VideoReadError(f"{name}: the image data is corrupt ({type(error).__name__}: {error}).") from error
    if orientation in (5, 6, 7, 8):  # a quarter turn swaps the sides (ImageOps.exif_transpose)
        width, height = height, width
    return VideoIndex(np.zeros(1, np.int64), np.zeros(1, np.int64), Fraction(1, 1), width, height, is_image=True)


# ----------------------------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------------------------


def _index(container, stream, name, source) -> VideoIndex:
    """Demux the stream once (no decoding) and collect frame and keyframe timestamps.

    Only when some packet is shown before the first keyframe (the leading B-frames of an open GOP at the
    very start of a cut stream, P-frames of a stream cut mid-GOP), or the header gives no frame size, are
    the first packets decoded too (at most `_PROBE_PACKETS`, from a second opening of the source): frames
    the decoder does not output there are not frames of a full decode.
    """
    import av

    packets = []  # (pts, dts, is_keyframe, size, crc) in decode order, without discarded or empty packets
    first_key_pts = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue  # discarded: e.g. frames an MP4 edit list cuts, which a full decode never outputs
            key = bool(packet.is_keyframe)
            packets.append((packet.pts, packet.dts, key, packet.size, zlib.crc32(memoryview(packet)) if key else -1))
            if key and first_key_pts is None and packet.pts is not None:
                first_key_pts = packet.pts
    except av.error.FFmpegError as error:
        if not packets:
            raise VideoReadError(f"{name}: the video stream cannot be read ({error}).") from error
        warnings.warn(f"{name}: demuxing stopped early ({error}); using the {len(packets)} frames before it.",
                      stacklevel=3)
    if not packets:
        raise VideoReadError(f"{name}: the video stream has no frames.")

    all_pts = [p[0] for p in packets]
    seekable = all(p is not None for p in all_pts) and len(set(all_pts)) == len(all_pts)
    codec = stream.codec_context
    width, height = codec.width, codec.height
    leading = seekable and (first_key_pts is None or min(all_pts) < first_key_pts)
    shown = None
    if leading or not width or not height:
        shown, size = _probe_decode(source, name, first_key_pts)
        width, height = size or (width, height)
    if not width or not height or width <= 0 or height <= 0:
        raise VideoReadError(f"{name}: the frame size is unknown (no frame decodes and the header gives none).")
    if width * height > MAX_FRAME_PIXELS:
        raise VideoReadError(f"{name}: the frame size {width} x {height} is implausible (corrupt header?).")
    if not seekable:
        return _unseekable_index(stream, packets, width, height, name)

    frame_pts = np.sort(np.asarray(all_pts, dtype=np.int64))
    if leading and shown is not None:
        frame_pts = frame_pts[(frame_pts >= first_key_pts) | np.isin(frame_pts, list(shown))]
    keyframes = [p[0] for p in packets if p[2]]
    keyframe_pts = np.sort(np.asarray(keyframes or [frame_pts[0]], dtype=np.int64))
    return VideoIndex(
        frame_pts, keyframe_pts, stream.time_base, width, height, seekable=True,
        packet_pts=np.asarray(all_pts, dtype=np.int64),
        packet_dts=np.asarray([NO_TIMESTAMP if p[1] is None else p[1] for p in packets], dtype=np.int64),
        packet_sizes=np.asarray([p[3] for p in packets], dtype=np.int64),
        packet_crc=np.asarray([p[4] for p in packets], dtype=np.int64),
    )


def _probe_decode(source, name, first_key_pts):
    """Decode the first packets (at most `_PROBE_PACKETS`) until the first keyframe comes out.

    Returns (pts of the frames output before it, or None when it never came out; the first frame's size
    or None)."""
    shown, size, done = set(), None, False
    with _open(source, name) as container:
        stream = _video_stream(container, name)
        codec = stream.codec_context
        packets = container.demux(stream)
        for _ in range(_PROBE_PACKETS + 1):
            packet = _next_packet(packets)
            frames, _ = _decode(packet, codec)
            for frame in frames:
                size = size or (frame.width, frame.height)
                if frame.pts is not None:
                    shown.add(frame.pts)
                    done = done or (first_key_pts is not None and frame.pts >= first_key_pts)
            if done or packet is None or packet.size == 0:
                break
    return (shown if done else None), size


def _unseekable_index(stream, packets, width, height, name) -> VideoIndex:
    """Index of a stream whose frames have no unique timestamps: frames are numbered as they decode, and
    timestamps come from the decode timestamps when they increase, else from the frame rate."""
    dts = [p[1] for p in packets]
    count = len(packets)
    if all(d is not None for d in dts) and all(b > a for a, b in zip(dts, dts[1:])):
        frame_pts, time_base = np.asarray(dts, dtype=np.int64), stream.time_base
    else:
        rate = stream.average_rate or stream.guessed_rate or 25
        frame_pts, time_base = np.arange(count, dtype=np.int64), Fraction(1) / Fraction(rate)
    warnings.warn(f"{name}: the video's packets have no unique timestamps; frames are read by decoding from "
                  "the start (slower, still exact).", stacklevel=4)
    return VideoIndex(frame_pts, frame_pts[:1].copy(), time_base, width, height, seekable=False,
                      packet_sizes=np.asarray([p[3] for p in packets], dtype=np.int64))


def probe_video(source) -> VideoIndex:
    """Demux a video (decoding only its first packets) and return its `VideoIndex`: frame count,
    timestamps, fps, keyframes. A still image file gives a one-frame index (``is_image=True``). ``source``: a
    path, an http(s) or file:// URL (an http(s) video is downloaded for this call: to probe and then read one
    download, use `local_source`), bytes or a binary file-like object."""
    name = _describe(source)
    with local_source(source) as source:
        source = _check_source(source, name)
        image = _still_image(source)
        if image is not None:
            with image:
                return _image_index(image, name)
        with _open(source, name) as container:
            return _index(container, _video_stream(container, name), name, source)


def _frame_count(name, value) -> int | None:
    """``value`` as a frame count: a whole number >= 1 (an int, a numpy integer or a float such as 8.0)."""
    if value is None:
        return None
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer())
    if isinstance(value, (bool, np.bool_)) or not whole or value < 1:
        raise ValueError(f"{name} must be a whole number of frames, at least 1; got {value!r}.")
    return int(value)


def check_sampling(num_frames=None, fps=None, max_frames=None):
    """(num_frames, fps, max_frames) checked (ints, and a float fps), before any file is opened: a ValueError
    names the setting and the value when it is not a whole number >= 1 (num_frames, max_frames; booleans
    refused), or not a finite number > 0 (fps)."""
    if fps is not None:
        if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, (int, float, np.integer, np.floating)) or not (
                0 < fps < float("inf")):
            raise ValueError(f"fps must be a number of frames a second above 0; got {fps!r}.")
        fps = float(fps)
    return _frame_count("num_frames", num_frames), fps, _frame_count("max_frames", max_frames)


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
    num_frames, fps, max_frames = check_sampling(num_frames, fps, max_frames)
    if num_frames is not None and fps is not None:
        raise ValueError("Pass num_frames or fps, not both.")
    if num_frames is not None:
        if num_frames >= total:
            indices = np.arange(total)
        else:
            indices = ((np.arange(num_frames) + 0.5) * total / num_frames).astype(np.int64)
    elif fps is not None:
        instants = np.arange(0.0, float(timestamps[-1]) + 1e-9, 1.0 / fps)
        right = np.clip(np.searchsorted(timestamps, instants), 1, total - 1) if total > 1 else np.zeros(len(instants), int)
        left = right - 1 if total > 1 else right
        nearest = np.where(np.abs(timestamps[left] - instants) <= np.abs(timestamps[right] - instants), left, right)
        indices = np.unique(nearest)
    else:
        indices = np.arange(total)
    if max_frames is not None:
        if len(indices) > max_frames:
            indices = indices[((np.arange(max_frames) + 0.5) * len(indices) / max_frames).astype(np.int64)]
    return np.unique(indices.astype(np.int64))


# ----------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------


def _seek(container, stream, pts: int):
    """Ask the demuxer for the keyframe at or before ``pts``. Where it really lands is checked afterwards."""
    container.seek(pts, stream=stream, backward=True, any_frame=False)


class _OverBudget(Exception):
    """Raised inside a run when the call has decoded more packets than its current limit allows."""


class _Cancelled(Exception):
    """Raised inside a run when another worker of the same call failed: the call is over."""


class _SeekMissed(Exception):
    """Raised inside a run that started with a seek, when it cannot give exact frames for its target: the
    seek landed after the target, on packets the index does not know, or the decoder put out no keyframe
    before the target. The caller then tries another strategy."""


class _Decoder:
    """One container on the source and runs of decoded frames, from a seek or from the start.

    A run yields the frames it can vouch for, in output (presentation) order, with their true timestamps:
    * from the start, every frame (a full decode);
    * after a seek, packets are skipped up to the first keyframe packet, which is recognised in the index
      (by size and CRC), and every packet from there on must be the index's next packet (by size). Each is
      re-stamped with the index's timestamps, since demuxers of program streams can report other ones after
      a seek. Frames are vouched for from the first keyframe the decoder puts out, and only at or after the
      keyframe packet's timestamp (leading pictures of an open GOP refer to frames before the seek).
    ``packets_decoded`` counts the call's work; beyond ``limit`` a run raises `_OverBudget`.
    """

    def __init__(self, source, name, index: VideoIndex, wanted_pts: set, thread_type: str = "AUTO", stop=None):
        self.source, self.name, self.index, self.wanted_pts = source, name, index, wanted_pts
        self.thread_type = thread_type  # FFmpeg's threading of this decoder ("AUTO", "SLICE", "NONE")
        self.stop = stop  # a threading.Event set when another worker of the call failed
        self.limit = WORK_BOUND_FACTOR * index.num_packets + WORK_BOUND_EXTRA
        self.packets_decoded = 0
        self.decode_errors = 0
        self.seeks = 0  # runs started by a seek
        self.missed_seeks = 0  # of which could not give the frame they were for
        self.full_decodes = 0  # runs from the start
        self.anchor_pts = None  # pts of the keyframe packet the last seek was recognised at
        self.container = None
        self.stream = None
        # Decode-order positions of the keyframe packets (those with a CRC).
        self._keyframe_positions = None if index.packet_crc is None else np.flatnonzero(index.packet_crc >= 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.container is not None:
            self.container.close()
            self.container = None

    def allow_one_full_decode(self):
        """Raise the limit so that one more decode of the whole stream from here fits."""
        self.limit = self.packets_decoded + self.index.num_packets + WORK_BOUND_EXTRA

    def _ensure_open(self):
        if self.container is None:
            self.container = _open(self.source, self.name)
            self.stream = _video_stream(self.container, self.name, self.thread_type)

    def from_start(self):
        """A full decode, from a freshly opened container (no seek)."""
        self.close()
        self._ensure_open()
        self.full_decodes += 1
        return self._run(None)

    def from_keyframe(self, keyframe_pts: int, target_pts: int):
        """Frames after seeking to the keyframe at or before ``keyframe_pts`` (None: the container cannot seek).
        The run raises `_SeekMissed` unless it vouches for a frame at or before ``target_pts`` first."""
        import av

        self._ensure_open()
        try:
            _seek(self.container, self.stream, int(keyframe_pts))
        except av.error.FFmpegError:
            return None
        self.seeks += 1
        self.anchor_pts = None
        return self._run(target_pts)

    def _identify(self, packet) -> int | None:
        """Decode-order position in the index of a keyframe packet met after a seek, or None."""
        index = self.index
        candidates = self._keyframe_positions[index.packet_sizes[self._keyframe_positions] == packet.size]
        if len(candidates):
            candidates = candidates[index.packet_crc[candidates] == zlib.crc32(memoryview(packet))]
        if len(candidates) == 0:
            return None
        if len(candidates) > 1 and packet.pts is not None:  # identical keyframes: the nearest in time
            candidates = candidates[np.argsort(np.abs(index.packet_pts[candidates] - packet.pts), kind="stable")]
        return int(candidates[0])

    def _run(self, target_pts):
        index = self.index
        seeked = target_pts is not None
        codec = self.stream.codec_context
        demuxed = self.container.demux(self.stream)
        position = None  # decode-order position in the index of the last packet (after a seek)
        anchor = None  # the first vouched-for timestamp after a seek
        trusted = not seeked
        while True:
            packet = _next_packet(demuxed)  # None also when the demuxer gives up: flush what was decoded
            self.packets_decoded += 1
            if self.packets_decoded > self.limit:
                raise _OverBudget()
            if self.stop is not None and self.stop.is_set():
                raise _Cancelled()
            end = packet is None or packet.size == 0
            if not end and packet.is_discard:
                continue
            if seeked and not end:
                if position is None:
                    if not packet.is_keyframe:
                        continue  # before the first keyframe after the seek: not decoded
                    position = self._identify(packet)
                    if position is None or index.packet_pts[position] > target_pts:
                        raise _SeekMissed()
                    anchor = self.anchor_pts = int(index.packet_pts[position])
                else:
                    position += 1
                    if position >= index.num_packets or index.packet_sizes[position] != packet.size:
                        raise _SeekMissed()  # not the packets the index has: the seek cannot be followed
                packet.pts = int(index.packet_pts[position])
                dts = int(index.packet_dts[position])
                packet.dts = None if dts == NO_TIMESTAMP else dts
            if seeked and end and anchor is None:
                raise _SeekMissed()  # the stream ended before a keyframe after the seek
            if not end and index.seekable:
                # Frames no other frame refers to are skipped unless wanted: decoding stays exact.
                codec.skip_frame = "DEFAULT" if packet.pts in self.wanted_pts else "NONREF"
            frames, failed = _decode(packet, codec)
            self.decode_errors += failed and trusted  # errors before the first keyframe after a seek are expected
            for frame in frames:
                if seeked:
                    if not trusted:
                        if not frame.key_frame:
                            continue
                        trusted = True
                        if frame.pts is None or frame.pts > target_pts:
                            raise _SeekMissed()  # the decoder restarted only after the target
                    if frame.pts is None or frame.pts < anchor:
                        continue  # a leading picture of the keyframe: its references precede the seek
                yield frame
            if end:
                if seeked and not trusted:
                    raise _SeekMissed()
                return  # end of stream (the empty packet flushed the decoder)


def _to_rgb(frame, index: VideoIndex, reformatter) -> np.ndarray:
    """(height, width, 3) uint8 of a decoded frame, scaled to the index's frame size if it differs.

    ``reformatter`` is one `av.video.reformatter.VideoReformatter` per call: it keeps its conversion context
    between frames of the same format, which halves the cost per frame of small videos against
    `frame.to_ndarray(format=...)` (a new context for every frame)."""
    return reformatter.reformat(frame, width=index.width, height=index.height, format="rgb24").to_ndarray()


class _CallbackProgress:
    """A progress "bar" that tells ``callback(frames done, frames in all)``; decoding threads share it."""

    def __init__(self, callback, total):
        import threading

        self.callback, self.total, self.done, self.lock = callback, total, 0, threading.Lock()
        callback(0, total)

    def update(self, count):
        with self.lock:  # one call at a time, in order: done only grows
            self.done += count
            self.callback(self.done, self.total)

    def close(self):
        pass


def _progress_bar(progress, total, name):
    if callable(progress):
        return _CallbackProgress(progress, total)
    if progress is None:
        hf_logging = sys.modules.get("transformers.utils.logging")  # its switch, when transformers is in use
        progress = sys.stderr.isatty() and (hf_logging is None or hf_logging.is_progress_bar_enabled())
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"decoding {os.path.basename(name)}", unit="frame", delay=PROGRESS_DELAY,
                leave=False)


def read_frames(source, indices, index: VideoIndex | None = None, progress: bool | None = None,
                workers: int | None = None) -> tuple[np.ndarray, np.ndarray, VideoIndex]:
    """Decode exactly the frames at ``indices`` (any order, repeats allowed).

    Args:
        source: a path, an http(s) or file:// URL (an http(s) video is downloaded into a temporary file for
            the call, which every decoding worker reads), bytes or a binary file-like object.
        indices: frame indices in presentation order (0 .. total_frames - 1).
        index: the video's `VideoIndex` from `probe_video`, when already known.
        progress: show a progress bar (None: on an interactive terminal, for decodes longer than 1 s); a
            callable is called as ``progress(frames decoded, frames to decode)`` instead, from the decoding
            threads, one call at a time.
        workers: decoding threads. The wanted frames are split at keyframes into contiguous ranges of about
            equal decoding work, and each range is decoded by its own single-threaded decoder on its own
            container, in parallel (FFmpeg releases the GIL while it decodes). None: one per core this process
            may run on, at most `MAX_DECODE_WORKERS`, fewer when there is little to decode. 1: one decoder
            with FFmpeg's own frame threading. Only paths and bytes (`io.BytesIO`) can be opened more than
            once; other file objects, and videos without usable timestamps, use one decoder.
    Returns:
        frames: (len(indices), height, width, 3) uint8 RGB, in the order of ``indices``;
        timestamps: (len(indices),) seconds; the `VideoIndex` of the video.
    """
    name = _describe(source)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"read_frames: workers must be a positive integer or None, got {workers!r}.")
    with local_source(source) as source:  # an http(s) URL: one download, read by every worker
        source = _check_source(source, name)
        if index is None:
            index = probe_video(source)
        if len(indices) and (indices.min() < 0 or indices.max() >= index.total_frames):
            raise VideoReadError(
                f"{name}: frame indices must be in 0..{index.total_frames - 1}, got {indices.min()}..{indices.max()}."
            )
        out = np.empty((len(indices), index.height, index.width, 3), dtype=np.uint8)
        positions: dict[int, list[int]] = {}
        for position, i in enumerate(indices.tolist()):
            positions.setdefault(i, []).append(position)
        if not positions:
            return out, index.timestamps[indices], index
        if index.is_image:
            image = load_image(source, name)
            if image.shape[:2] != (index.height, index.width):
                raise VideoReadError(f"{name}: the image changed while it was read.")
            out[:] = image
            return out, index.timestamps[indices], index

        wanted = sorted(positions)
        parts = [wanted]
        if index.seekable and workers != 1 and (isinstance(source, (str, os.PathLike)) or type(source) is io.BytesIO):
            parts = _split_at_keyframes(index, wanted, workers or _default_workers())
        bar = _progress_bar(progress, len(wanted), name)
        try:
            if len(parts) == 1:
                decode_errors, replaced = _read_part(source, name, index, wanted, positions, out, bar, "AUTO", None)
            else:
                decode_errors, replaced = _read_parts_in_parallel(source, name, index, parts, positions, out, bar)
        finally:
            if bar is not None:
                bar.close()
        if decode_errors:
            warnings.warn(f"{name}: skipped {decode_errors} video packet(s) that failed to decode.", stacklevel=2)
        if replaced:
            shown = ", ".join(map(str, replaced[:10])) + (", ..." if len(replaced) > 10 else "")
            warnings.warn(f"{name}: frame(s) {shown} did not decode; each is replaced by the next frame that did.",
                          stacklevel=2)
        return out, index.timestamps[indices], index


# Decoding threads at most (read_frames' default takes one per available core, up to this).
MAX_DECODE_WORKERS = 8
# Frames of estimated decoding work below which a range is not split off for another worker (opening a
# container and starting a decoder costs about as much as decoding a few frames).
MIN_FRAMES_PER_WORKER = 24


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, cgroups' cpusets)
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DECODE_WORKERS))


def _reopened(source, count):
    """``count`` independent sources reading the path or `io.BytesIO` ``source``."""
    if isinstance(source, (str, os.PathLike)):
        return [source] * count
    data = source.getvalue()  # shares the bytes of a BytesIO made from bytes (no copy)
    return [io.BytesIO(data) for _ in range(count)]


def _split_at_keyframes(index: VideoIndex, wanted: list[int], workers: int) -> list[list[int]]:
    """``wanted`` (ascending frame indices) cut into at most ``workers`` contiguous parts of about equal
    decoding work, only where a keyframe separates two wanted frames (so no group of pictures is decoded by
    two workers). The work of the frames sharing a keyframe is estimated as the frames from that keyframe to
    the last of them, in presentation order."""
    wanted_arr = np.asarray(wanted, dtype=np.int64)
    keyframe_frames = np.searchsorted(index.frame_pts, index.keyframe_pts)  # frame index of each keyframe
    group = np.searchsorted(keyframe_frames, wanted_arr, side="right") - 1  # keyframe each frame follows (-1: none)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])  # first wanted frame of each group
    ends = np.r_[starts[1:], len(wanted_arr)]
    first_frame = np.where(group[starts] >= 0, keyframe_frames[np.maximum(group[starts], 0)], 0)
    cost = wanted_arr[ends - 1] - first_frame + 1  # (groups,) frames decoded for each group, about
    total = int(cost.sum())
    workers = max(1, min(workers, len(starts), total // MIN_FRAMES_PER_WORKER))
    if workers == 1:
        return [wanted]
    # cut before the group where the cumulative work first reaches each j / workers of the total
    cumulative = np.cumsum(cost) - cost  # work before each group
    cuts = sorted({int(np.searchsorted(cumulative, total * j / workers)) for j in range(1, workers)} - {0, len(starts)})
    bounds = [0] + [int(starts[c]) for c in cuts] + [len(wanted)]
    return [wanted[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _read_part(source, name, index, wanted, positions, out, bar, thread_type, stop):
    """Decode the frames ``wanted`` (ascending) into their rows of ``out``. Returns (packets that failed to
    decode, frames replaced by the next one)."""
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()  # one per thread: it keeps its conversion context between frames

    def deliver(i, frame):
        out[positions[i]] = _to_rgb(frame, index, reformatter)
        if bar is not None:
            bar.update(1)

    with _Decoder(source, name, index, set(index.frame_pts[wanted].tolist()), thread_type, stop) as decoder:
        if index.seekable:
            replaced = _read_by_seeking(decoder, index, wanted, deliver)
        else:
            replaced = _read_in_order(decoder, wanted, deliver)
    return decoder.decode_errors, replaced


def _read_parts_in_parallel(source, name, index, parts, positions, out, bar):
    """`_read_part` for each part on its own thread, decoder and container (FFmpeg threading off: the
    workers are the parallelism). The first failure stops the other workers and is raised."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    stop = threading.Event()
    sources = _reopened(source, len(parts))

    def work(part, part_source):
        try:
            return _read_part(part_source, name, index, part, positions, out, bar, "NONE", stop)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="storm-hf-decode") as pool:
        futures = [pool.submit(work, part, part_source) for part, part_source in zip(parts, sources)]
    errors = [f.exception() for f in futures]
    failures = [e for e in errors if e is not None and not isinstance(e, _Cancelled)]
    if failures:
        raise failures[0]
    decode_errors, replaced = 0, []
    for future in futures:
        part_errors, part_replaced = future.result()
        decode_errors += part_errors
        replaced += part_replaced
    return decode_errors, replaced


def _read_in_order(decoder, wanted, deliver) -> list[int]:
    """Unseekable streams: decode from the start and number the frames as they come out."""
    pending = list(wanted)
    number = 0
    try:
        for frame in decoder.from_start():
            if number == pending[0]:
                deliver(pending.pop(0), frame)
                if not pending:
                    return []
            number += 1
    except _OverBudget:
        raise VideoReadError(f"{decoder.name}: gave up after decoding {decoder.packets_decoded} packets (the stream "
                             f"has {decoder.index.num_packets}).") from None
    raise VideoReadError(
        f"{decoder.name}: frame {pending[0]} could not be decoded (only {number} frames decode; the stream "
        "ends or is corrupt)."
    )


# Seeks from earlier keyframes tried for one frame before decoding the file from the start.
MAX_EARLIER_SEEKS = 2


def _read_by_seeking(decoder, index, wanted, deliver) -> list[int]:
    """Seekable streams: for each wanted frame (ascending), seek to a keyframe at or before it when that skips
    work, decode forward and take the frame whose pts matches. Returns the frames replaced by the next one.

    Every frame is settled (delivered, or declared lost because decoding went continuously past it) after
    at most 1 + MAX_EARLIER_SEEKS seeks and one decode from the start; once a decode from the start was
    needed, the call continues forward from there without seeking, so it decodes the file at most once more.
    """
    keyframes = index.keyframe_pts
    pending = [(i, int(index.frame_pts[i])) for i in wanted]  # (frame index, pts), ascending
    replaced: list[int] = []
    backoff = 0  # extra keyframes a seek aims before the target's own (learned when seeks land late)
    slack = 0  # keyframes before its aim that a seek has landed (learned), so seeking ahead must skip more
    attempts = 0  # earlier-keyframe seeks spent on the first pending frame
    whole_file = False  # decoding forward from the start for the rest of the call
    run = None  # the current run of decoded frames
    run_aim = None  # the keyframe position the current run's seek aimed at
    reached = -1  # position in `keyframes` of the last keyframe the current run decoded through

    def keyframe_position(pts):
        return int(np.searchsorted(keyframes, pts, side="right")) - 1  # -1: before the first keyframe

    while pending:
        target, target_pts = pending[0]
        aim = keyframe_position(target_pts) - backoff - attempts
        if run_aim is not None and decoder.anchor_pts is not None:
            slack = max(slack, run_aim - keyframe_position(decoder.anchor_pts))
            run_aim = None
        if run is not None and not whole_file and aim - slack > reached:
            run.close()  # a keyframe after what was decoded lets a seek skip work
            run = None
        if run is None:
            run_aim = None
            if whole_file or aim < 0:  # from the start: needs no seek, cannot land wrong
                run = decoder.from_start()
            else:
                run, run_aim = decoder.from_keyframe(int(keyframes[aim]), target_pts), aim
                if run is None:  # the container cannot seek
                    whole_file, run = True, decoder.from_start()
            reached = max(aim, -1)
        try:
            for frame in run:
                reached = max(reached, keyframe_position(frame.pts))
                while pending and pending[0][1] < frame.pts:
                    replaced.append(pending[0][0])  # decoded continuously past it: it does not decode
                    deliver(pending.pop(0)[0], frame)
                if pending and pending[0][1] == frame.pts:
                    deliver(pending.pop(0)[0], frame)
                if not pending or pending[0][0] != target:
                    break
            else:
                raise VideoReadError(
                    f"{decoder.name}: frame {target} could not be decoded (the stream ends or is corrupt after it)."
                )
        except _SeekMissed:
            decoder.missed_seeks += 1
            run.close()
            run = run_aim = None
            attempts += 1  # try again from an earlier keyframe (from the start, before the first one)
            if attempts > MAX_EARLIER_SEEKS:
                whole_file = True  # decode from the start, and go on forward from there
            continue
        except _OverBudget:
            if whole_file:
                raise VideoReadError(
                    f"{decoder.name}: gave up after decoding {decoder.packets_decoded} packets (the stream has "
                    f"{index.num_packets}); its timestamps or seek index are inconsistent."
                ) from None
            run.close()
            decoder.allow_one_full_decode()
            whole_file, run = True, None
            continue
        if attempts and not whole_file:
            backoff += attempts  # later seeks aim that much earlier from the start
        attempts = 0
    return replaced


__all__ = ["VideoReadError", "VideoIndex", "probe_video", "sample_frame_indices", "read_frames", "load_image",
           "check_sampling", "check_url", "download_video", "local_source", "DownloadedVideo"]
