# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""STORM configuration, and the pure functions that count visual tokens.

The token-count functions live here (not in the modeling file) so that the processor, which must not
import torch modules it does not need, and the model use the very same code: the number of placeholder
tokens a video becomes and the number of features the model produces can never disagree.
"""

from __future__ import annotations

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec


# ----------------------------------------------------------------------------------------------------
# Token counting (pure functions, shared by StormConfig, StormModel and the processor)
# ----------------------------------------------------------------------------------------------------


def num_frames_after_reduction(num_frames: int, temporal_pool_k: int, temporal_sample_s: int) -> int:
    """Frames left after temporal pooling (k) and then test-time temporal sampling (s).

    Pooling averages non-overlapping groups of k consecutive frames; when ``num_frames`` is not a
    multiple of k the last group averages the frames it has (no frame is dropped, none is invented):
    ``ceil(T / k)`` frames. Sampling then keeps pooled frames 0, s, 2s, ...: ``ceil(T' / s)`` frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    pooled = math.ceil(num_frames / temporal_pool_k)
    return math.ceil(pooled / temporal_sample_s)


def grid_after_reduction(grid_size: int, spatial_pool_p: int) -> int:
    """Side of the per-frame token grid after p x p average pooling (a partial last window is kept)."""
    return math.ceil(grid_size / spatial_pool_p)


def num_video_tokens(
    num_frames: int, grid_size: int, temporal_pool_k: int = 1, spatial_pool_p: int = 1, temporal_sample_s: int = 1
) -> int:
    """Visual tokens a clip of ``num_frames`` frames becomes (an image is ``num_frames=1``).

    Args:
        num_frames: frames fed to the model.
        grid_size: side of the per-frame token grid after the pixel shuffle (16 for 448 px / patch 14 / 2).
        temporal_pool_k, spatial_pool_p, temporal_sample_s: the reduction settings.
    """
    frames = num_frames_after_reduction(num_frames, temporal_pool_k, temporal_sample_s)
    side = grid_after_reduction(grid_size, spatial_pool_p)
    return frames * side * side


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

# SigLIP-So400m/14 (the image encoder of PaliGemma) at 448 px: 32 x 32 patches of width 1152.
_SIGLIP_SO400M_448 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 448,
    "vision_use_head": False,
}

# Qwen2-7B (the LLM of Qwen2-VL-7B).
_QWEN2_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    # Qwen2's tokenizer: <|endoftext|> 151643, <|im_end|> 151645 ends a chat turn (as in Qwen2-7B-Instruct's
    # generation config), so generate() stops at the end of the answer.
    "bos_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
}


@strict
class StormConfig(PreTrainedConfig):
    r"""
    Configuration of a STORM video LLM (Jiang et al., "Token-Efficient Long Video Understanding for
    Multimodal LLMs", 2025): image encoder -> 2x2 pixel shuffle + Linear -> bidirectional Mamba temporal
    encoder -> temporal/spatial pooling and test-time temporal sampling -> LLM.

    The defaults are the paper's 7B layout (SigLIP-So400m/14 at 448 px, Qwen2-7B). Fields marked
    *paper* are fixed by the paper; fields marked *ours* are choices the paper leaves open.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Image encoder config; a dict carrying `model_type` (e.g. `"siglip_vision_model"`,
            `"clip_vision_model"`) resolves through AutoConfig. Default: SigLIP-So400m/14 at 448 px (*paper*).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            LLM config; a dict carrying `model_type` (e.g. `"qwen2"`, `"llama"`). Default: Qwen2-7B (*paper*).
        image_token_id (`int`, defaults to 151646):
            Placeholder token replaced by image features.
        video_token_id (`int`, defaults to 151647):
            Placeholder token replaced by video features.
        vision_feature_layer (`int`, *optional*, defaults to `None`):
            Which image-encoder features feed the projector. `None`: `last_hidden_state`, the output after the
            encoder's final LayerNorm (as PaliGemma, whose SigLIP the paper uses, feeds its LLM). An int `i`:
            `hidden_states[i]`, exactly as LLaVA / LLaVA-OneVision read it (so `-1` is the last layer *before*
            SigLIP's post-LayerNorm, and a model converted from LLaVA-OneVision keeps its features). *ours*
        vision_frames_per_batch (`int`, *optional*, defaults to 16):
            Frames the image encoder sees at once: a video's frames go through it in micro-batches of this
            many, so its activations (at 448 px, 1024 patches per frame in every layer) exist for one
            micro-batch at a time and peak memory grows with frames only by what is kept per frame (pixels,
            encoder output, projected tokens). Outputs do not depend on it. `None`: all frames in one batch.
            *ours*
        downsample_ratio (`int`, defaults to 2):
            Pixel-shuffle factor r: each r x r block of patch tokens is concatenated along channels before
            the Linear projector (1024 tokens x 1152 -> 256 x 4608 at the defaults). *paper*
        projector_bias (`bool`, defaults to `True`):
            Bias of the Linear projector. *ours*
        temporal_num_layers (`int`, defaults to 1):
            Pre-norm residual Mamba layers L in the temporal encoder. The paper does not give L; one
            bidirectional layer keeps the encoder near the paper's "at most ~3% of latency". *ours*
            `0` removes the temporal encoder (no layers and no final norm: the projector's tokens go straight
            to the reduction), the paper's VILA-style baseline with the same projector and token reduction.
        temporal_d_state (`int`, defaults to 16):
            SSM state size per channel (mamba_ssm's `d_state`). *ours* (mamba_ssm's default)
        temporal_d_conv (`int`, defaults to 4):
            Width of the causal depthwise convolution (`d_conv`). *ours* (mamba_ssm's default)
        temporal_expand (`int`, defaults to 2):
            Inner width factor, d_inner = expand * hidden size (`expand`). *ours* (mamba_ssm's default)
        temporal_dt_rank (`int` or `"auto"`, defaults to `"auto"`):
            Rank of the time-step projection; `"auto"` is ceil(hidden / 16) as in mamba_ssm. *ours*
        temporal_conv_bias (`bool`, defaults to `True`), temporal_bias (`bool`, defaults to `False`):
            Biases of the convolution and of in_proj/out_proj, as mamba_ssm's `conv_bias` / `bias`.
        temporal_bidirectional (`bool`, defaults to `True`):
            Scan the flattened (frame, row, column) sequence in both directions (*paper*, main results).
            `False` gives the forward-only variant of the paper's Table 7, whose output at token t never
            depends on later tokens, which allows streaming a video chunk by chunk.
        temporal_direction_merge (`"add"`, `"mean"` or `"concat"`, defaults to `"add"`):
            How the two directions are combined inside a layer. Each direction is its own full Mamba mixer
            (separate input/output projections, convolution and SSM parameters; Vision Mamba instead shares
            the projections between directions): the sum of the two mixers' outputs, their mean, or a Linear
            over their concatenation. *ours*
        temporal_share_projections (`bool`, defaults to `False`):
            Vision Mamba's bidirectional block instead of two independent mixers: one input and one output
            projection shared by both directions (each keeps its own convolution and SSM parameters), the
            directions added (or averaged, with `temporal_direction_merge="mean"`) before the shared output
            projection. 48% fewer temporal-encoder parameters at the 7B layout (84.3 M instead of 161.4 M per
            layer). Needs a bidirectional encoder
            and the add or mean merge. *ours* (off by default; the paper does not say)
        temporal_scan_order (`"raster"`, `"time_major"` or `"alternating"`, defaults to `"raster"`):
            The order in which a layer scans a clip's (frame, token) grid. `"raster"` (*paper*): frame after
            frame, the tokens of a frame in raster order, so neighbouring frames' tokens at one place are a
            frame's worth of tokens apart. `"time_major"`: every frame of one token position, then the next
            position, so the depthwise convolution (``temporal_d_conv`` steps) and the scan's most recent steps
            span consecutive frames at one place. `"alternating"`: raster in even layers (the first),
            time-major in odd ones. Time-major layers cannot `stream` (a position's later frames come before the
            next position's first). *ours*. Measured on the miniature's within-window questions
            (benchmarks/RESULTS.md): a bidirectional encoder trained from scratch carries order through k=4
            pooling with `"alternating"` and 2 layers (the bundled model), not with one raster layer. The
            default stays the paper's `"raster"`: configs saved before this field existed load as trained, and
            streaming needs it.
        temporal_dt_min (`float`, defaults to 0.001), temporal_dt_max (`float`, defaults to 0.1):
            The range of the SSM's initial time steps: ``dt = exp(U(log dt_min, log dt_max))`` per channel, as in
            mamba_ssm. A larger ``dt`` forgets faster and weighs the current token more.
        temporal_dt_init (`"random"` or `"constant"`, defaults to `"random"`), temporal_dt_scale (`float`,
            defaults to 1.0), temporal_dt_init_floor (`float`, defaults to 1e-4):
            mamba_ssm's init of ``dt_proj``: its weight U(-s, s) (`"random"`) or the constant s, with
            s = dt_rank**-0.5 * dt_scale; initial time steps below the floor are raised to it.
        temporal_final_norm (`bool`, defaults to `True`):
            LayerNorm after the last layer, as in Mamba's `norm_f`. *ours*
        temporal_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the temporal encoder's LayerNorms.
        temporal_inference_chunk_tokens (`int`, *optional*, defaults to 4096):
            Without gradients (inference), sequences longer than this go through each direction of each
            temporal layer in chunks of this many tokens that carry the scan and convolution state, so the
            mixer's intermediates (about ten d_inner-wide tensors per token) exist for one chunk at a time.
            Outputs equal the one-call scan to float tolerance. `None`: always one call. Training (gradients
            on) and mamba_ssm's fused CUDA path always run one call. *ours*
        temporal_pool_k (`int`, defaults to 4):
            Temporal average pooling: every k consecutive frames become one (T -> ceil(T / k)); a last
            partial group averages the frames it has. *paper* (k = 4 in the main results)
        spatial_pool_p (`int`, defaults to 1):
            p x p average pooling of each frame's token grid (1 = off; 2 = 256 -> 64 tokens per frame in the
            paper's spatial-pooling variant). A partial last window is averaged over what it covers.
        temporal_sample_s (`int`, defaults to 1):
            Test-time temporal sampling: keep frames 0, s, 2s, ... (T' -> ceil(T' / s)). Applied *after*
            temporal pooling, so the groups that pooling averages are the ones it was trained on. It is
            applied whenever set (train or eval) so that token counts never depend on the mode; train with
            s = 1. *paper* (s = 2 in the tables; the position is *ours*)
        use_mamba_kernels (`bool`, defaults to `True`):
            Use mamba_ssm / causal_conv1d kernels when they import and tensors are on CUDA; otherwise the
            pure-PyTorch scan is used. Results agree to float tolerance either way.
        tie_word_embeddings (`bool`, defaults to `False`):
            Tie the LM head to the input embeddings.

    Example:

    ```python
    >>> from storm_hf import StormConfig
    >>> config = StormConfig(temporal_pool_k=4, temporal_sample_s=2)
    >>> config.num_visual_tokens(128)  # 128 frames x 256 tokens -> 32 -> 16 frames x 256
    4096
    ```
    """

    model_type = "storm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="siglip_vision_model", init_kwargs=_SIGLIP_SO400M_448
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2", init_kwargs=_QWEN2_7B),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151646
    video_token_id: int = 151647
    vision_feature_layer: int | None = None
    vision_frames_per_batch: int | None = 16
    downsample_ratio: int = 2
    projector_bias: bool = True
    temporal_num_layers: int = 1
    temporal_d_state: int = 16
    temporal_d_conv: int = 4
    temporal_expand: int = 2
    temporal_dt_rank: int | str = "auto"
    temporal_conv_bias: bool = True
    temporal_bias: bool = False
    temporal_bidirectional: bool = True
    temporal_direction_merge: Literal["add", "mean", "concat"] = "add"
    temporal_share_projections: bool = False
    temporal_scan_order: Literal["raster", "time_major", "alternating"] = "raster"
    temporal_dt_min: float = 0.001
    temporal_dt_max: float = 0.1
    temporal_dt_init: Literal["random", "constant"] = "random"
    temporal_dt_scale: float = 1.0
    temporal_dt_init_floor: float = 1e-4
    temporal_final_norm: bool = True
    temporal_norm_eps: float = 1e-5
    temporal_inference_chunk_tokens: int | None = 4096
    temporal_pool_k: int = 4
    spatial_pool_p: int = 1
    temporal_sample_s: int = 1
    use_mamba_kernels: bool = True
    tie_word_embeddings: bool = False

    def temporal_layer_order(self, layer: int) -> str:
        """The scan order of temporal layer ``layer`` (0-based): "raster" or "time_major"."""
        if self.temporal_scan_order == "alternating":
            return "raster" if layer % 2 == 0 else "time_major"
        return self.temporal_scan_order

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("downsample_ratio", "temporal_num_layers", "temporal_d_state", "temporal_d_conv",
                     "temporal_expand", "temporal_pool_k", "spatial_pool_p", "temporal_sample_s"):
            value = getattr(self, name)
            smallest = 0 if name == "temporal_num_layers" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
                kind = "a non-negative" if smallest == 0 else "a positive"
                raise ValueError(f"StormConfig.{name} must be {kind} integer, got {value!r}.")
        for name in ("temporal_inference_chunk_tokens", "vision_frames_per_batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"StormConfig.{name} must be a positive integer or None, got {value!r}.")
        for name, choices in (("temporal_direction_merge", ("add", "mean", "concat")),
                              ("temporal_scan_order", ("raster", "time_major", "alternating")),
                              ("temporal_dt_init", ("random", "constant"))):
            if getattr(self, name) not in choices:
                listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
                raise ValueError(f"StormConfig.{name} must be {listed}, got {getattr(self, name)!r}.")
        for name in ("temporal_dt_min", "temporal_dt_max", "temporal_dt_scale", "temporal_dt_init_floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"StormConfig.{name} must be a positive number, got {value!r}.")
        if self.temporal_dt_min > self.temporal_dt_max:
            raise ValueError(f"StormConfig: temporal_dt_min ({self.temporal_dt_min}) is above temporal_dt_max "
                             f"({self.temporal_dt_max}).")
        if self.temporal_share_projections is True and self.temporal_direction_merge == "concat":
            raise ValueError("StormConfig: temporal_share_projections merges the directions before the shared "
                             "out_proj; use temporal_direction_merge 'add' or 'mean', not 'concat'.")
        for name in ("temporal_bidirectional", "temporal_final_norm", "temporal_conv_bias", "temporal_bias",
                     "temporal_share_projections",
                     "projector_bias", "use_mamba_kernels"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"StormConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        if isinstance(self.temporal_norm_eps, bool) or not isinstance(self.temporal_norm_eps, (int, float)) or self.temporal_norm_eps <= 0:
            raise ValueError(f"StormConfig.temporal_norm_eps must be a positive number, got {self.temporal_norm_eps!r}.")
        if self.temporal_dt_rank != "auto" and (not isinstance(self.temporal_dt_rank, int) or self.temporal_dt_rank < 1):
            raise ValueError(f"StormConfig.temporal_dt_rank must be 'auto' or a positive integer, got {self.temporal_dt_rank!r}.")
        patches = self.vision_config.image_size // self.vision_config.patch_size
        if self.vision_config.image_size % self.vision_config.patch_size or patches % self.downsample_ratio:
            raise ValueError(
                f"StormConfig: the image encoder's patch grid ({self.vision_config.image_size} px / patch "
                f"{self.vision_config.patch_size}) must be whole and divisible by downsample_ratio="
                f"{self.downsample_ratio} for the pixel shuffle."
            )

    @property
    def grid_size(self) -> int:
        """Side of a frame's token grid entering the temporal encoder (16 at the defaults)."""
        return self.vision_config.image_size // self.vision_config.patch_size // self.downsample_ratio

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per frame entering the temporal encoder (256 at the defaults)."""
        return self.grid_size**2

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        """Placeholder tokens a video of ``num_frames`` frames becomes; an image is ``num_frames=1``.

        Frames are pooled in groups of ``temporal_pool_k`` (ceil), then sampled every ``temporal_sample_s``
        (ceil); each remaining frame has ``ceil(grid_size / spatial_pool_p) ** 2`` tokens.
        """
        return num_video_tokens(
            num_frames, self.grid_size, self.temporal_pool_k, self.spatial_pool_p, self.temporal_sample_s
        )

    # ------------------------------------------------------------------------------------------------
    # Named presets
    # ------------------------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "StormConfig":
        """A named layout: ``"storm-7b"`` (the paper's: SigLIP-So400m/14 at 448 px + Qwen2-7B, k = 4) or
        ``"tiny"`` (random-init test size: hidden 32, 2 layers, 32 px frames, 16 tokens per frame, a 512-token
        vocabulary in the layout of `storm_hf.miniature.tiny.word_tokenizer`, where `<|im_end|>` (509) ends generation).
        Keyword arguments override fields of the preset."""
        if name == "storm-7b":
            return cls(**overrides)
        if name == "tiny":
            fields = {
                "vision_config": {
                    "model_type": "siglip_vision_model",
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "image_size": 32,
                    "patch_size": 4,
                    "vision_use_head": False,
                },
                "text_config": {
                    "model_type": "qwen2",
                    "vocab_size": 512,
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 2,
                    "max_position_embeddings": 2048,
                    "tie_word_embeddings": False,
                    "eos_token_id": 509,  # <|im_end|> in the tiny layout (storm_hf.miniature.tiny)
                    "pad_token_id": 0,
                },
                "image_token_id": 510,
                "video_token_id": 511,
                "temporal_num_layers": 2,
                "temporal_d_state": 4,
            }
            fields.update(overrides)
            return cls(**fields)
        raise ValueError(f"Unknown StormConfig preset {name!r}; known presets: 'storm-7b', 'tiny'.")


__all__ = ["StormConfig", "num_video_tokens", "num_frames_after_reduction", "grid_after_reduction"]
