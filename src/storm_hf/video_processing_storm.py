# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""StormVideoProcessor: video files or frame arrays -> `pixel_values_videos` for STORM, without torchvision.

Files (path, http(s) or file:// URL, bytes or binary file-like) are read with `video_io` (PyAV, exact frames, no full decode; a
still image file is a one-frame clip); arrays and frame lists are sampled in memory. Frames are resized and normalised in torch. A batch of
videos of different lengths is padded at the end and comes with `video_num_frames`.
"""

from __future__ import annotations

import io
import os
from copy import deepcopy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata

from .video_io import VideoReadError, check_sampling, local_source, probe_video, read_frames, sample_frame_indices


class StormVideosKwargs(VideosKwargs, total=False):
    """The standard video-processor kwargs plus `max_frames`, a cap on the sampled frame count."""

    max_frames: int | None


@dataclass
class StormVideoMetadata(VideoMetadata):
    """`VideoMetadata` whose `timestamps` are the decoded frames' own presentation times (exact for
    variable-frame-rate videos), in seconds from the first frame."""

    frame_timestamps: list[float] | None = field(default=None)

    @property
    def timestamps(self) -> list[float]:
        if self.frame_timestamps is not None:
            return list(self.frame_timestamps)
        return super().timestamps


def _is_file_source(video) -> bool:
    return isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview, io.IOBase)) or hasattr(video, "read")


def _is_frame_list(videos) -> bool:
    """A list of frames (one in-memory video) rather than a list of videos."""
    return (isinstance(videos, (list, tuple)) and len(videos) > 0 and not _is_file_source(videos[0])
            and np.asarray(videos[0]).ndim == 3)


def _frames_array(video, name: str) -> torch.Tensor:
    """An in-memory video as a (frames, height, width, channels) tensor; clear errors for bad shapes."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise VideoReadError(f"{name}: the list of frames is empty.")
        video = np.stack([np.asarray(frame) for frame in video])
    if not torch.is_tensor(video):
        video = np.asarray(video)
        video = torch.from_numpy(video if video.flags.writeable else video.copy())
    frames = video
    if frames.dim() != 4:
        raise VideoReadError(
            f"{name}: a video array must have 4 dimensions (frames, height, width, channels), got shape {tuple(frames.shape)}."
        )
    if frames.shape[-1] not in (1, 3, 4):
        raise VideoReadError(f"{name}: expected 1, 3 or 4 channels in the last dimension, got shape {tuple(frames.shape)}.")
    if frames.shape[0] == 0:
        raise VideoReadError(f"{name}: the video array has no frames.")
    return frames


class StormVideoProcessor(VideoProcessorMixin):
    r"""
    Video processor for STORM.

    A still image file given as a video (JPEG, PNG, WebP, ...) is a one-frame clip, upright by its EXIF
    orientation; its metadata has `video_backend="pillow"` and fps 0. Animated GIF / WebP / APNG are videos.

    Args (all also accepted per call):
        num_frames (`int`, defaults to 32): frames sampled uniformly over the whole video (the paper's
            default); a video with fewer frames gives all of them, once each.
        fps (`float`, *optional*): sample one frame per `1 / fps` seconds instead (exclusive with
            `num_frames`; pass `num_frames=None`).
        max_frames (`int`, *optional*): cap applied after `num_frames` / `fps`.
        do_sample_frames (`bool`, defaults to `True`): sample frames; `False` keeps every frame given.
        size (`dict`, defaults to `{"height": 448, "width": 448}`), do_resize, do_rescale, rescale_factor,
        do_normalize, image_mean / image_std (SigLIP: 0.5 / 0.5), do_convert_rgb: as in transformers.
        return_metadata (`bool`, defaults to `False`): also return `video_metadata`, one `VideoMetadata`
            per video with `frames_indices`, `fps` and exact `timestamps`.

    Returns a `BatchFeature` with `pixel_values_videos` (videos, max_frames, 3, height, width), padded with
    zeros at the end, and `video_num_frames` (videos,).
    """

    valid_kwargs = StormVideosKwargs
    # `video_num_tokens` comes from StormProcessor (placeholder counts, with return_text_replacement_offsets=True);
    # listed here because tools that sort a processor's outputs by modality (vLLM) look for video names here.
    model_input_names = ["pixel_values_videos", "video_num_frames", "video_num_tokens"]

    do_convert_rgb = True
    do_resize = True
    size = {"height": 448, "width": 448}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_sample_frames = True
    num_frames = 32
    fps = None
    max_frames = None
    return_metadata = False

    _settings = ("do_convert_rgb", "do_resize", "size", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                 "image_std", "do_sample_frames", "num_frames", "fps", "max_frames", "return_metadata")

    def __init__(self, **kwargs):
        settings = {key: kwargs.pop(key) for key in self._settings if key in kwargs}
        super().__init__(**kwargs)
        for key in self._settings:  # instance attributes, so that save_pretrained writes them all
            setattr(self, key, settings.get(key, deepcopy(getattr(type(self), key))))

    # -- the VideoProcessorMixin steps ---------------------------------------------------------------

    def sample_frames(self, metadata: VideoMetadata, num_frames=None, fps=None, max_frames=None, timestamps=None,
                      **kwargs) -> np.ndarray:
        """Indices to keep, from `video_io.sample_frame_indices` (uniform segment centres, or by fps)."""
        if timestamps is None:
            rate = metadata.fps or 1.0
            timestamps = np.arange(metadata.total_num_frames) / rate
        return sample_frame_indices(np.asarray(timestamps), num_frames=num_frames, fps=fps, max_frames=max_frames)

    def _decode_and_sample_videos(self, videos, video_metadata=None, do_sample_frames=True, num_frames=None,
                                  fps=None, max_frames=None):
        """Each video -> ((frames, height, width, channels) uint8/float tensor, StormVideoMetadata)."""
        out = []
        for position, video in enumerate(videos):
            name = video if isinstance(video, (str, os.PathLike)) else f"video {position}"
            if _is_file_source(video):
                with local_source(video) as source:  # a URL is downloaded once, for the probe and the read
                    index = probe_video(source)
                    indices = (self.sample_frames(None, num_frames, fps, max_frames, timestamps=index.timestamps)
                               if do_sample_frames else np.arange(index.total_frames))
                    frames, stamps, _ = read_frames(source, indices, index=index)
                frames = torch.from_numpy(frames)
                meta = StormVideoMetadata(
                    total_num_frames=index.total_frames, fps=index.fps, width=index.width, height=index.height,
                    duration=index.duration, video_backend="pillow" if index.is_image else "pyav",
                    frames_indices=indices.tolist(), frame_timestamps=[float(t) for t in stamps],
                )
            else:
                frames = _frames_array(video, str(name))
                given = video_metadata[position] if video_metadata is not None else None
                rate = (given.get("fps") if isinstance(given, dict) else getattr(given, "fps", None)) or None
                total = frames.shape[0]
                indices = np.arange(total)
                if do_sample_frames:
                    indices = self.sample_frames(
                        VideoMetadata(total_num_frames=total, fps=rate), num_frames, fps if rate else None, max_frames
                    )
                    frames = frames[torch.from_numpy(indices)]
                meta = StormVideoMetadata(
                    total_num_frames=total, fps=rate, width=frames.shape[2], height=frames.shape[1],
                    duration=(total / rate) if rate else None, video_backend="array",
                    frames_indices=indices.tolist(),
                    frame_timestamps=[float(i) / rate for i in indices] if rate else None,
                )
            out.append((frames, meta))
        return out

    def _prepare_input_videos(self, videos, do_convert_rgb=True):
        """(frames, H, W, C) -> float (frames, 3, H, W) in the input's value range."""
        prepared = []
        for frames in videos:
            frames = frames.permute(0, 3, 1, 2)  # (frames, C, H, W)
            if frames.shape[1] == 4:
                frames = frames[:, :3]  # drop alpha
            if frames.shape[1] == 1:
                if not do_convert_rgb:
                    raise VideoReadError("A grayscale video needs do_convert_rgb=True.")
                frames = frames.expand(-1, 3, -1, -1)
            prepared.append(frames.float())
        return prepared

    def _preprocess(self, videos, do_resize, size, do_rescale, rescale_factor, do_normalize, image_mean, image_std):
        """Resize (bilinear, antialiased), rescale and normalise each (frames, 3, H, W) clip in torch."""
        out = []
        mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        for frames in videos:
            if do_resize and tuple(frames.shape[-2:]) != (size["height"], size["width"]):
                frames = F.interpolate(frames, size=(size["height"], size["width"]), mode="bilinear",
                                       antialias=True, align_corners=False)
            if do_rescale:
                frames = frames * rescale_factor
            if do_normalize:
                frames = (frames - mean) / std
            out.append(frames)
        return out

    def preprocess(self, videos, **kwargs) -> BatchFeature:
        """
        Args:
            videos: one video or a list of videos; a video is a path, an http(s) or file:// URL (downloaded
                once, into a temporary file removed after reading), bytes, a binary file-like object, a
                (frames, height, width, channels) numpy array or torch tensor, or a list of PIL images / arrays.
            **kwargs: any of the settings in the class docstring, plus `video_metadata` (for arrays: a dict
                or VideoMetadata with `fps` per video, used by `fps` sampling and timestamps) and
                `return_tensors`.
        """
        unknown = set(kwargs) - set(self._settings) - {"video_metadata", "return_tensors"}
        if unknown:
            raise ValueError(f"StormVideoProcessor: unknown arguments {sorted(unknown)}.")
        opts = {key: kwargs.get(key, getattr(self, key)) for key in self._settings}
        if "fps" in kwargs and kwargs["fps"] is not None and "num_frames" not in kwargs:
            opts["num_frames"] = None  # fps sampling asked for per call replaces the default frame count
        if opts["num_frames"] is not None and opts["fps"] is not None:
            raise ValueError("StormVideoProcessor: pass num_frames or fps, not both.")
        try:  # before any file is read: num_frames=2.5 is a setting's error, not the file's
            check_sampling(opts["num_frames"], opts["fps"], opts["max_frames"])
        except ValueError as error:
            raise ValueError(f"StormVideoProcessor: {error}") from None
        single = _is_file_source(videos) or isinstance(videos, np.ndarray) or torch.is_tensor(videos) or (
            _is_frame_list(videos)
        )
        videos = [videos] if single else list(videos)
        if not videos:
            raise ValueError("StormVideoProcessor: no videos given.")
        metadata = kwargs.get("video_metadata")
        if metadata is not None and not isinstance(metadata, (list, tuple)):
            metadata = [metadata]

        decoded = self._decode_and_sample_videos(
            videos, metadata, opts["do_sample_frames"], opts["num_frames"], opts["fps"], opts["max_frames"]
        )
        clips = self._prepare_input_videos([frames for frames, _ in decoded], opts["do_convert_rgb"])
        clips = self._preprocess(clips, opts["do_resize"], opts["size"], opts["do_rescale"], opts["rescale_factor"],
                                 opts["do_normalize"], opts["image_mean"], opts["image_std"])
        counts = [clip.shape[0] for clip in clips]
        shapes = {tuple(clip.shape[1:]) for clip in clips}
        if len(shapes) > 1:
            raise ValueError(f"StormVideoProcessor: videos differ in frame size after resizing ({sorted(shapes)}); "
                             "keep do_resize=True.")
        batch = torch.zeros(len(clips), max(counts), *clips[0].shape[1:])  # (videos, max_frames, 3, H, W)
        for i, clip in enumerate(clips):
            batch[i, : clip.shape[0]] = clip
        data = {"pixel_values_videos": batch, "video_num_frames": torch.tensor(counts)}
        features = BatchFeature(data=data, tensor_type=kwargs.get("return_tensors"))
        if opts["return_metadata"]:
            features["video_metadata"] = [meta for _, meta in decoded]
        return features


__all__ = ["StormVideoProcessor", "StormVideoMetadata", "StormVideosKwargs"]
