# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""StormProcessor: a tokenizer and a StormVideoProcessor; expands each video placeholder to exactly the
number of visual tokens the model will produce for that video (the same `num_video_tokens` the model uses).
"""

from __future__ import annotations

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs
from transformers.utils import logging

from .configuration_storm import num_video_tokens
from .video_io import check_sampling
from .video_processing_storm import StormVideoProcessor, StormVideosKwargs, _is_frame_list

logger = logging.get_logger(__name__)

# Tokenizer settings the processor passes on (transformers' own list of text kwargs).
_TOKENIZER_KEYS = frozenset(TextKwargs.__annotations__) - {"return_tensors"}
# The token reduction the processor counts placeholders for; the model must produce the same (its config).
_REDUCTION_KEYS = ("temporal_pool_k", "spatial_pool_p", "temporal_sample_s")


class StormProcessorVideosKwargs(StormVideosKwargs, total=False):
    """Call settings for videos: the video processor's, and the token reduction, which a call may only restate
    (the model's config decides it; see `StormProcessor._check_reduction`)."""

    temporal_pool_k: int
    spatial_pool_p: int
    temporal_sample_s: int


class StormProcessorKwargs(ProcessingKwargs, total=False):
    """What `StormProcessor.__call__` takes. Declared so that tools that route settings between a processor's
    constructor and its calls (vLLM's ``mm_processor_kwargs``) treat the token reduction as a call setting,
    which the processor checks against its own, rather than building a processor with another reduction than
    the model's."""

    videos_kwargs: StormProcessorVideosKwargs

# Qwen2-style chat template: `{"type": "video", ...}` and `{"type": "image", ...}` content items become one
# placeholder each (expanded by the processor), `{"type": "text", "text": ...}` items their text.
STORM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}{{ '<video>' }}"
    "{% elif item['type'] == 'image' %}{{ '<image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class StormProcessor(ProcessorMixin):
    r"""
    Tokenizer + `StormVideoProcessor` for STORM.

    Args:
        video_processor (`StormVideoProcessor`): turns videos into `pixel_values_videos` / `video_num_frames`.
        tokenizer: the LLM's tokenizer, holding `video_token` (and `image_token`) as tokens.
        chat_template (`str`, *optional*): defaults to `STORM_CHAT_TEMPLATE` (Qwen2 style).
        video_token, image_token (`str`): placeholder strings, `"<video>"` / `"<image>"` by default.
        grid_size, temporal_pool_k, spatial_pool_p, temporal_sample_s (`int`): the model's token layout and
            reduction settings (`StormProcessor.from_config` copies them from a `StormConfig`).
    """

    attributes = ["video_processor", "tokenizer"]
    valid_processor_kwargs = StormProcessorKwargs

    def __init__(self, video_processor=None, tokenizer=None, chat_template=None, video_token="<video>",
                 image_token="<image>", grid_size=16, temporal_pool_k=4, spatial_pool_p=1, temporal_sample_s=1,
                 **kwargs):
        self.video_token = video_token
        self.image_token = image_token
        self.grid_size = grid_size
        self.temporal_pool_k = temporal_pool_k
        self.spatial_pool_p = spatial_pool_p
        self.temporal_sample_s = temporal_sample_s
        super().__init__(video_processor, tokenizer, chat_template=chat_template or STORM_CHAT_TEMPLATE)
        # Batches are padded on the left unless the tokenizer was saved with a side of its own: generation appends
        # after the last position, so a right-padded prompt would be continued after its padding (transformers only
        # warns). Training collators that need right padding ask for it (StormDataCollator does).
        if tokenizer is not None and "padding_side" not in getattr(tokenizer, "init_kwargs", {}):
            tokenizer.padding_side = "left"
            tokenizer.init_kwargs["padding_side"] = "left"  # saved with the tokenizer

    @property
    def image_processor(self):
        """Images go through the video processor as one-frame clips (same resize and normalisation). Exposed so
        that tools that look for an image processor (vLLM's Transformers backend) serve images too: the video
        processor's settings, and the names of what the processor returns for images."""
        return _StillImageView(self.video_processor)

    def check_argument_for_proper_class(self, argument_name, argument):
        # transformers checks video processors against BaseVideoProcessor, which needs torchvision;
        # ours is a VideoProcessorMixin without it.
        # (Compared by base class: with remote code the video processor may come from another module copy.)
        if argument_name == "video_processor":
            from transformers.video_processing_utils import VideoProcessorMixin

            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"video_processor must be a StormVideoProcessor, got {type(argument).__name__}.")
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def from_config(cls, config, video_processor=None, tokenizer=None, **kwargs) -> "StormProcessor":
        """A processor whose token counts follow `config` (a `StormConfig`). Without a video processor, one
        is made that resizes frames to the image encoder's input size (SigLIP mean/std 0.5)."""
        side = config.vision_config.image_size
        if video_processor is None:
            video_processor = StormVideoProcessor(size={"height": side, "width": side})
        elif video_processor.do_resize and (video_processor.size["height"], video_processor.size["width"]) != (side, side):
            raise ValueError(
                f"StormProcessor.from_config: the video processor resizes to {video_processor.size}, but the "
                f"model's image encoder takes {side} x {side} frames."
            )
        if tokenizer is not None:
            for token, expected in ((kwargs.get("video_token", "<video>"), config.video_token_id),
                                    (kwargs.get("image_token", "<image>"), config.image_token_id)):
                token_id = tokenizer.convert_tokens_to_ids(token)
                if token_id != expected:
                    raise ValueError(
                        f"StormProcessor.from_config: the tokenizer maps {token} to id {token_id}, but the model "
                        f"expects {expected}; add the token to the tokenizer and set the config's id to match."
                    )
        return cls(video_processor=video_processor, tokenizer=tokenizer, grid_size=config.grid_size,
                   temporal_pool_k=config.temporal_pool_k, spatial_pool_p=config.spatial_pool_p,
                   temporal_sample_s=config.temporal_sample_s, **kwargs)

    def num_visual_tokens(self, num_frames: int) -> int:
        """Tokens a video of `num_frames` frames becomes (an image: 1): `StormConfig.num_visual_tokens`."""
        return num_video_tokens(num_frames, self.grid_size, self.temporal_pool_k, self.spatial_pool_p,
                                self.temporal_sample_s)

    def frames_for_budget(self, max_visual_tokens: int, num_frames: int | None = None) -> int:
        """The largest frame count (at most `num_frames`, when given) whose video fits `max_visual_tokens`."""
        if self.num_visual_tokens(1) > max_visual_tokens:
            raise ValueError(
                f"StormProcessor: max_visual_tokens={max_visual_tokens} is smaller than one frame "
                f"({self.num_visual_tokens(1)} tokens)."
            )
        frames = 1
        while (num_frames is None or frames < num_frames) and self.num_visual_tokens(frames + 1) <= max_visual_tokens:
            frames += 1
            if frames > 1_000_000:
                break
        return frames

    def video_chunks(self, video, chunk_frames: int = 32, num_frames=None, fps=None, max_frames=None,
                     progress=False, index=None) -> "VideoChunks":
        """A long video as chunks of pixels for `StormModel.encode_video`, never all of it in memory: the frames
        are sampled as this processor samples them (``num_frames`` / ``fps`` / ``max_frames``, None: its
        settings), then decoded and normalised ``chunk_frames`` at a time. ``video``: a path or file:// / http(s)
        URL (an http(s) video is downloaded once), bytes or a binary file, or a (frames, H, W, 3) array taken
        as it is (no sampling). ``index``: the video's `probe_video` index, when the caller already has it."""
        return VideoChunks(self.video_processor, video, chunk_frames, num_frames, fps, max_frames, progress, index)

    def apply_chat_template(self, conversation, *args, **kwargs):
        """transformers' `apply_chat_template`, refusing a user turn whose text is blank: a turn with a
        ``{"type": "text"}`` item (or string content) that holds no words would ask the model an empty question.
        A user turn of only a video / image (no text item) is kept as it is. A video item's ``video``, ``url`` or
        ``path`` may be a local path or an http(s) / file:// URL (see `StormVideoProcessor`)."""
        _check_user_turns(conversation)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def __call__(self, text=None, videos=None, images=None, return_tensors=None, padding=True,
                 max_visual_tokens=None, return_text_replacement_offsets=False, video_num_frames=None,
                 **kwargs) -> BatchFeature:
        """
        Args:
            text: a string or a list of strings, each with one `video_token` per video it refers to.
            videos: the videos in placeholder order (flat over the batch, or one list per text), in any
                form `StormVideoProcessor` takes.
            video_num_frames: instead of ``videos``, the frame count of each video encoded elsewhere
                (`StormModel.encode_video`'s ``video_num_frames``): placeholders are expanded for those counts
                and no pixels are returned.
            **kwargs: video-processor settings (`num_frames`, `fps`, `max_frames`, `return_metadata`, ...)
                and tokenizer settings (`padding`, `truncation`, `max_length`, `add_special_tokens`, ...).
        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, with videos, `pixel_values_videos` and
            `video_num_frames` (and `video_metadata` when asked). With ``return_text_replacement_offsets=True``
            also `text_replacement_offsets` (where each placeholder was expanded) and `video_num_tokens` /
            `image_num_tokens` (each video's / image's placeholder count, which the model's
            `get_video_features` / `get_image_features` check their features against).
        """
        if text is None:
            raise ValueError("StormProcessor: `text` is required.")
        texts = [text] if isinstance(text, str) else list(text)
        for position, t in enumerate(texts):
            # A prompt of only a placeholder ("<video>") is a prompt; an empty one is a question that got lost.
            if not isinstance(t, str) or not t.strip():
                which = "text" if isinstance(text, str) else f"text[{position}]"
                raise ValueError(f"StormProcessor: {which} is {'empty' if isinstance(t, str) else type(t).__name__}; "
                                 "give the prompt (e.g. the question, with a video placeholder per video).")
        self._check_reduction(kwargs)
        video_keys = set(self.video_processor._settings) | {"video_metadata"}
        unknown = set(kwargs) - video_keys - _TOKENIZER_KEYS - {"return_dict", "audio"}
        if unknown:  # a typo (nframes=8) must not silently give the default
            raise ValueError(
                f"StormProcessor: unknown argument(s) {', '.join(sorted(unknown))}. Accepted: the video settings "
                f"{', '.join(sorted(video_keys))}; max_visual_tokens; images, videos, text; and the tokenizer's "
                f"{', '.join(sorted(_TOKENIZER_KEYS))}."
            )
        if kwargs.pop("audio", None) is not None:
            raise ValueError("StormProcessor: STORM takes no audio.")
        video_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in video_keys}
        try:  # before the frame budget adjusts them: num_frames=2.5 must not become 2 silently
            check_sampling(video_kwargs.get("num_frames"), video_kwargs.get("fps"), video_kwargs.get("max_frames"))
        except ValueError as error:
            raise ValueError(f"StormProcessor: {error}") from None
        if max_visual_tokens is not None:
            self._apply_budget(max_visual_tokens, video_kwargs)
        data = {}
        if video_num_frames is not None:
            if videos is not None:
                raise ValueError("StormProcessor: give videos or video_num_frames (videos encoded elsewhere), not both.")
            counts = [int(n) for n in (video_num_frames.tolist() if hasattr(video_num_frames, "tolist")
                                       else video_num_frames)]
            if any(n < 1 for n in counts):
                raise ValueError(f"StormProcessor: video_num_frames must be positive frame counts, got {counts}.")
        elif videos is not None:
            flat = [v for group in videos for v in group] if _is_nested(videos) else (
                list(videos) if isinstance(videos, (list, tuple)) and not _is_frame_list(videos) else [videos]
            )
            video_inputs = self.video_processor(flat, **video_kwargs)
            counts = video_inputs["video_num_frames"].tolist()
            data.update(video_inputs)
        else:
            counts = []
        image_list = _flatten_images(images)
        if image_list:
            # Each image is a one-frame clip: same resize and normalisation, no frame sampling.
            image_inputs = self.video_processor([_image_array(im) for im in image_list], do_sample_frames=False)
            data["pixel_values"] = image_inputs["pixel_values_videos"][:, 0]  # (images, 3, H, W)
        image_placeholders = sum(t.count(self.image_token) for t in texts)
        if image_placeholders != len(image_list):
            raise ValueError(
                f"StormProcessor: the text has {image_placeholders} {self.image_token} placeholders but "
                f"{len(image_list)} images were given."
            )
        placeholders = sum(t.count(self.video_token) for t in texts)
        if placeholders != len(counts):
            raise ValueError(
                f"StormProcessor: the text has {placeholders} {self.video_token} placeholders but {len(counts)} "
                "videos were given."
            )
        expanded, offsets = self._expand_placeholders(texts, counts)
        kwargs.pop("return_dict", None)
        encoded = self.tokenizer(expanded, padding=padding, return_tensors=None, **kwargs)
        data.update(encoded)
        if return_text_replacement_offsets:
            data["text_replacement_offsets"] = offsets
            # The placeholder count of each video / image, for a caller that hands features to the placeholders
            # itself (vLLM): `get_video_features` / `get_image_features` refuse features of another length.
            if counts:
                data["video_num_tokens"] = [self.num_visual_tokens(n) for n in counts]
            if image_list:
                data["image_num_tokens"] = [self.num_visual_tokens(1)] * len(image_list)
        return BatchFeature(data=data, tensor_type=return_tensors,
                            skip_tensor_conversion=["video_metadata", "text_replacement_offsets"])

    def _check_reduction(self, kwargs: dict):
        """Take k / p / s out of call settings: accepted when they are the processor's own, refused otherwise,
        since the model produces the tokens of its config's reduction and per-call placeholder counts would not
        match them (vLLM hands its ``mm_processor_kwargs``, the engine's and each request's, to calls: see
        `StormProcessorKwargs`)."""
        for name in _REDUCTION_KEYS:
            if name in kwargs:
                value = kwargs.pop(name)
                if value != getattr(self, name):
                    raise ValueError(
                        f"StormProcessor: {name}={value!r} in the call, but this processor counts placeholders for "
                        f"{name}={getattr(self, name)!r}, the model's. The token reduction is the model's setting: "
                        "choose it for a deployment by saving the model and processor after "
                        "storm_hf.inference.set_token_reduction(model, processor, ...)."
                    )

    def _expand_placeholders(self, texts: list[str], video_frames: list[int]):
        """Each image placeholder becomes `num_visual_tokens(1)` of itself, each video placeholder
        `num_visual_tokens(frames)` of itself (videos in order over the batch). Returns the expanded texts and,
        per text, where each placeholder was and where its expansion is (transformers' `text_replacement_offsets`
        format, which vLLM's Transformers backend reads): dicts of ``type``, ``span`` (in the text given),
        ``new_span`` (in the expanded text), ``text`` and ``replacement``."""
        expanded, all_offsets, video = [], [], 0
        tokens = {self.image_token: "image", self.video_token: "video"}
        for text in texts:
            out, offsets, position = [], [], 0
            length = 0  # of the expanded text so far
            while True:
                found = [(text.find(token, position), token) for token in tokens]
                found = [(at, token) for at, token in found if at >= 0]
                if not found:
                    break
                at, token = min(found)
                out.append(text[position:at])
                length += at - position
                if tokens[token] == "video":
                    replacement = self.replace_video_token({"video_num_frames": video_frames}, video)
                    video += 1
                else:
                    replacement = self.replace_image_token({}, 0)
                offsets.append({"type": tokens[token], "span": (at, at + len(token)),
                                "new_span": (length, length + len(replacement)), "text": token,
                                "replacement": replacement})
                out.append(replacement)
                length += len(replacement)
                position = at + len(token)
            out.append(text[position:])
            expanded.append("".join(out))
            all_offsets.append(offsets)
        return expanded, all_offsets

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        """The expansion of the ``video_idx``-th video's placeholder (transformers' multimodal-processor hook)."""
        return self.video_token * self.num_visual_tokens(int(video_inputs["video_num_frames"][video_idx]))

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The expansion of an image placeholder: an image is a one-frame clip."""
        return self.image_token * self.num_visual_tokens(1)

    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs):
        """Placeholder tokens per input, without processing it (what vLLM's Transformers backend asks before it
        runs the processor): ``video_sizes`` as (frames given, height, width) per video, ``image_sizes`` as
        (height, width) per image; ``kwargs`` the call's video settings (``do_sample_frames``, ``num_frames``,
        ``max_frames``, ...), defaulting to the video processor's. Frames given as arrays have no frame rate, so
        fps sampling does not apply to them: the count is what the video processor's own `sample_frames` keeps of
        them, as when it processes them."""
        from transformers.processing_utils import MultiModalData
        from transformers.video_utils import VideoMetadata

        self._check_reduction(kwargs)
        data = {}
        if video_sizes is not None:
            settings = self.video_processor
            sample = kwargs.get("do_sample_frames", settings.do_sample_frames)
            num_frames = kwargs.get("num_frames", settings.num_frames)
            max_frames = kwargs.get("max_frames", settings.max_frames)
            counts = []
            for size in video_sizes:
                given = int(size[0])
                kept = given if not sample else len(settings.sample_frames(
                    VideoMetadata(total_num_frames=given, fps=None), num_frames, None, max_frames))
                counts.append(self.num_visual_tokens(kept))
            data["num_video_tokens"] = counts
        if image_sizes is not None:
            data["num_image_tokens"] = [self.num_visual_tokens(1)] * len(image_sizes)
            data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**data)

    def _apply_budget(self, max_visual_tokens, video_kwargs):
        """Lower num_frames (or max_frames with fps sampling) so that each video fits the budget."""
        by_fps = video_kwargs.get("fps", self.video_processor.fps) is not None and "num_frames" not in video_kwargs
        key = "max_frames" if by_fps else "num_frames"  # under fps sampling the count is capped, not set
        current = video_kwargs.get(key, getattr(self.video_processor, key))
        frames = self.frames_for_budget(max_visual_tokens, current)
        if current is None or frames < current:
            video_kwargs[key] = frames
            logger.warning(f"max_visual_tokens={max_visual_tokens}: {key}={frames} instead of {current} "
                           f"({self.num_visual_tokens(frames)} visual tokens per video).")

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "pixel_values_videos", "video_num_frames"]


class _StillImageView:
    """The video processor seen as the processor's image processor: its settings (size, mean, std, ...) as they
    are, and the names of the processor's image outputs (images are one-frame clips through it)."""

    model_input_names = ["pixel_values", "image_num_tokens"]

    def __init__(self, video_processor):
        self._video_processor = video_processor

    def __getattr__(self, name):
        return getattr(self._video_processor, name)

    def __call__(self, *args, **kwargs):
        return self._video_processor(*args, **kwargs)


def file_sampling(video_processor, num_frames, fps, max_frames, who: str):
    """The sampling of a video file as ``video_processor`` does it: ``num_frames`` evenly or ``fps`` frames a
    second (neither: the processor's settings), at most ``max_frames`` (None: the processor's); checked before
    any file is read. Returns (num_frames, fps, max_frames); a ValueError starting with ``who`` otherwise."""
    from .video_io import check_sampling

    if num_frames is not None and fps is not None:
        raise ValueError(f"{who}: sample by num_frames or by fps, not both.")
    if num_frames is None and fps is None:
        num_frames, fps = video_processor.num_frames, video_processor.fps
    max_frames = video_processor.max_frames if max_frames is None else max_frames
    return check_sampling(num_frames, fps, max_frames)


class VideoChunks:
    """Iterable of (frames, 3, H, W) pixel tensors over the sampled frames of one video (see
    `StormProcessor.video_chunks`); ``num_frames``, ``indices`` and ``timestamps`` are known before the first
    chunk is decoded. Iterating again reads the video again."""

    def __init__(self, video_processor, video, chunk_frames, num_frames, fps, max_frames, progress, index=None):
        import numpy as np

        from .video_io import local_source, probe_video

        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"video_chunks: chunk_frames must be a positive integer, got {chunk_frames!r}.")
        self.video_processor, self.chunk_frames, self.progress = video_processor, chunk_frames, progress
        self._array = None
        if isinstance(video, np.ndarray) or hasattr(video, "shape"):
            frames = np.asarray(video)
            if frames.ndim != 4:
                raise ValueError(f"video_chunks: an array video must be (frames, height, width, channels), got "
                                 f"shape {frames.shape}.")
            self._array, self.source, self.index = frames, None, None
            self.indices = np.arange(len(frames))
            self.timestamps = None
        else:
            num_frames, fps, max_frames = file_sampling(video_processor, num_frames, fps, max_frames, "video_chunks")
            self._local = local_source(video)  # an http(s) video: one download, removed when this is closed
            self.source = self._local.__enter__()
            try:
                self.index = index if index is not None else probe_video(self.source)
                self.indices = video_processor.sample_frames(None, num_frames, fps, max_frames,
                                                             timestamps=self.index.timestamps)
            except BaseException:
                self.close()
                raise
            self.timestamps = np.asarray(self.index.timestamps)[self.indices]
        self.num_frames = int(len(self.indices))

    def __len__(self):
        return self.num_frames

    def __iter__(self):
        from .video_io import read_frames

        for start in range(0, self.num_frames, self.chunk_frames):
            wanted = self.indices[start:start + self.chunk_frames]
            if self._array is not None:
                frames = self._array[wanted]
            else:
                frames = read_frames(self.source, wanted, index=self.index, progress=self.progress)[0]
            yield self.video_processor([frames], do_sample_frames=False,
                                       return_tensors="pt")["pixel_values_videos"][0]  # (frames, 3, H, W)

    def close(self):
        local = getattr(self, "_local", None)
        if local is not None:
            self._local = None
            local.__exit__(None, None, None)

    def __del__(self):
        self.close()


def _check_user_turns(conversation):
    """ValueError naming the turn when a user turn's text is blank (see `StormProcessor.apply_chat_template`);
    a conversation in another form is left to transformers."""
    if isinstance(conversation, dict):
        conversation = conversation.get("messages", [])
    if not isinstance(conversation, (list, tuple)):
        return
    batched = bool(conversation) and all(isinstance(c, (list, tuple)) or isinstance(c, dict) and "messages" in c
                                         for c in conversation)
    for number, messages in enumerate(conversation if batched else [conversation]):
        messages = messages.get("messages", []) if isinstance(messages, dict) else messages
        for turn, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts = [content]
            elif isinstance(content, (list, tuple)):
                texts = [item.get("text") for item in content if isinstance(item, dict) and item.get("type") == "text"]
            else:
                continue
            if texts and not any(isinstance(t, str) and t.strip() for t in texts):
                where = f"conversation {number}, message {turn}" if batched else f"message {turn}"
                raise ValueError(f"StormProcessor.apply_chat_template: the user's text in {where} is empty; "
                                 "give the question (or leave out the text item for a video-only turn).")


def _flatten_images(images) -> list:
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        images = [images]
    flat = []
    for item in images:
        flat.extend(_flatten_images(item) if isinstance(item, (list, tuple)) else [item])
    return [im for im in flat if im is not None]


def _image_array(image):
    """An image (PIL image, path, or (H, W[, C]) array / tensor) as a one-frame (1, H, W, C) array. Paths are
    read like still images given as videos (`video_io.load_image`: RGB, upright by the EXIF orientation)."""
    import os

    import numpy as np

    from .video_io import load_image

    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)  # a VideoReadError (a ValueError) naming the file when it is not an image
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"An image must be (height, width) or (height, width, channels), got shape {array.shape}.")
    return array[None]


def _is_nested(videos) -> bool:
    return isinstance(videos, (list, tuple)) and len(videos) > 0 and all(
        isinstance(group, (list, tuple)) and not _is_frame_list(group) for group in videos
    )


__all__ = ["StormProcessor", "StormProcessorKwargs", "VideoChunks", "STORM_CHAT_TEMPLATE"]
