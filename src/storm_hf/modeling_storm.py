# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""STORM: a video LLM with a bidirectional Mamba temporal encoder between the image encoder and the LLM.

The pipeline as one shape chain (paper defaults: 448 px frames, SigLIP-So400m/14, Qwen2-7B, D = 3584):

    pixel_values_videos (B, T, 3, 448, 448)
      -> image encoder, frames as a batch          (B*T, 1024, 1152)      32 x 32 patches
      -> 2x2 pixel shuffle                         (B*T, 256, 4608)       16 x 16 grid
      -> Linear                                    (B*T, 256, D)
      -> Mamba temporal encoder over the flattened (B, T*256, D)          frames in time, raster inside
      -> temporal pool k, spatial pool p, sample s (B, T', N', D)
      -> scattered into the video placeholder tokens of the LLM's input embeddings

Images take the same path with T = 1. Pure functions (pixel shuffle, pooling, sampling) come first so
they can be tested and benchmarked alone; the selective scan lives in `selective_scan.py`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils.generic import can_return_tuple

from .configuration_storm import StormConfig
from .selective_scan import causal_conv1d, selective_scan


# ----------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------


def pixel_shuffle(features: torch.Tensor, grid_size: int, ratio: int) -> torch.Tensor:
    """Concatenate each ``ratio x ratio`` block of neighbouring tokens along channels.

    Args:
        features: (frames, grid_size * grid_size, channels), tokens in raster order.
    Returns:
        (frames, (grid_size // ratio) ** 2, channels * ratio**2), blocks in raster order; inside a block
        the channels are the block's tokens in raster order.
    """
    frames, num_tokens, channels = features.shape
    if num_tokens != grid_size * grid_size or grid_size % ratio:
        raise ValueError(
            f"pixel_shuffle: expected {grid_size}x{grid_size} tokens divisible by {ratio}, got {num_tokens} tokens."
        )
    side = grid_size // ratio
    x = features.view(frames, side, ratio, side, ratio, channels)  # (frames, row, r, col, r, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (frames, row, col, r, r, C)
    return x.reshape(frames, side * side, ratio * ratio * channels)


def temporal_pool(features: torch.Tensor, k: int) -> torch.Tensor:
    """Average non-overlapping groups of ``k`` consecutive frames.

    Args:
        features: (batch, frames, tokens, dim).
    Returns:
        (batch, ceil(frames / k), tokens, dim); a last partial group is the mean of the frames it has.
    """
    if k == 1:
        return features
    batch, frames, tokens, dim = features.shape
    groups = math.ceil(frames / k)
    pad = groups * k - frames
    if pad:
        features = F.pad(features, (0, 0, 0, 0, 0, pad))  # zero frames at the end
    sums = features.view(batch, groups, k, tokens, dim).sum(dim=2)  # (batch, groups, tokens, dim)
    counts = torch.full((groups,), float(k), dtype=sums.dtype, device=sums.device)
    counts[-1] = k - pad
    return sums / counts.view(1, groups, 1, 1)


def spatial_pool(features: torch.Tensor, grid_size: int, p: int) -> torch.Tensor:
    """``p x p`` average pooling of each frame's token grid (stride p, a partial last window is averaged
    over the tokens it covers).

    Args:
        features: (batch, frames, grid_size * grid_size, dim), tokens in raster order.
    Returns:
        (batch, frames, ceil(grid_size / p) ** 2, dim).
    """
    if p == 1:
        return features
    batch, frames, tokens, dim = features.shape
    x = features.reshape(batch * frames, grid_size, grid_size, dim).permute(0, 3, 1, 2)  # (BT, dim, h, w)
    x = F.avg_pool2d(x, kernel_size=p, stride=p, ceil_mode=True)  # (BT, dim, h', w')
    side = x.shape[-1]
    return x.permute(0, 2, 3, 1).reshape(batch, frames, side * side, dim)


def temporal_sample_indices(num_frames: int, s: int, device=None) -> torch.Tensor:
    """Indices of the frames kept by test-time temporal sampling: 0, s, 2s, ... (``ceil(num_frames / s)``)."""
    return torch.arange(0, num_frames, s, device=device)


def reduce_visual_tokens(features: torch.Tensor, grid_size: int, k: int, p: int, s: int) -> torch.Tensor:
    """Temporal pooling (k), then spatial pooling (p), then test-time temporal sampling (s).

    Args:
        features: (batch, frames, grid_size**2, dim), the temporal encoder's output per frame.
    Returns:
        (batch, frames', tokens', dim) with frames' = ceil(ceil(frames / k) / s), tokens' = ceil(grid / p)**2.
    """
    x = temporal_pool(features, k)
    x = spatial_pool(x, grid_size, p)
    if s > 1:
        x = x[:, temporal_sample_indices(x.shape[1], s, device=x.device)]
    return x


# ----------------------------------------------------------------------------------------------------
# Temporal encoder: Mamba-1 mixer with mamba_ssm's parameter names, pre-norm blocks, streaming state
# ----------------------------------------------------------------------------------------------------


@dataclass
class MambaMixerState:
    """State a forward-only mixer carries between calls. conv_state: (batch, d_inner, d_conv), the last
    d_conv inputs of the convolution; ssm_state: (batch, d_inner, d_state) fp32. Same layout as mamba_ssm's
    inference cache."""

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class StormMambaMixer(nn.Module):
    """A Mamba-1 mixer computing the same function as ``mamba_ssm.modules.mamba_simple.Mamba`` on
    ``(batch, length, d_model)``, with its parameter names and shapes, so weights move both ways.

    Parameters: ``in_proj`` (2*d_inner, d_model), ``conv1d`` (d_inner, 1, d_conv) depthwise,
    ``x_proj`` (dt_rank + 2*d_state, d_inner), ``dt_proj`` (d_inner, dt_rank) + bias, ``A_log``
    (d_inner, d_state), ``D`` (d_inner,), ``out_proj`` (d_model, d_inner).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_kernels: bool = True,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init, self.dt_scale, self.dt_init_floor = (
            dt_min, dt_max, dt_init, dt_scale, dt_init_floor
        )
        self.use_kernels = use_kernels
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1,
            bias=conv_bias, **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        # A_log and D stay fp32 (as in mamba_ssm) and take no weight decay.
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        self.init_mamba_weights()

    @torch.no_grad()
    def init_mamba_weights(self):
        """mamba_ssm's initialisation: S4D-real A (A_log = log 1..N), D = 1, dt_proj weight uniform in
        +-dt_rank^-0.5 * dt_scale (or constant), dt_proj bias = inverse softplus of a log-uniform dt in
        [dt_min, dt_max] clamped at dt_init_floor. Goes through transformers.initialization so weights
        loaded from a checkpoint are never overwritten."""
        if self.A_log.is_meta:
            return  # materialised later by PreTrainedModel._init_weights
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        init.copy_(self.A_log, torch.log(A).expand(self.d_inner, -1))
        init.ones_(self.D)
        dt_init_std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            init.constant_(self.dt_proj.weight, dt_init_std)
        elif self.dt_init == "random":
            init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"StormMambaMixer: dt_init must be 'random' or 'constant', got {self.dt_init!r}.")
        dt = torch.exp(
            torch.rand(self.d_inner, dtype=torch.float32, device=self.dt_proj.bias.device)
            * (math.log(self.dt_max) - math.log(self.dt_min))
            + math.log(self.dt_min)
        ).clamp(min=self.dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        init.copy_(self.dt_proj.bias, inv_dt)

    def init_state(self, batch_size: int, device=None) -> MambaMixerState:
        """An all-zero state: the state before the first token of a stream."""
        device = device if device is not None else self.A_log.device
        return MambaMixerState(
            conv_state=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=self.conv1d.weight.dtype),
            ssm_state=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(
        self, hidden_states: torch.Tensor, state: MambaMixerState | None = None, return_state: bool = False
    ):
        """
        Args:
            hidden_states: (batch, length, d_model).
            state: the `MambaMixerState` left by the previous chunk of the same stream, or None for a
                sequence that starts here.
            return_state: also return the state after the last token (to continue the stream).
        Returns:
            (batch, length, d_model), and with ``return_state`` the new `MambaMixerState`.
        """
        xz = self.in_proj(hidden_states)  # (batch, length, 2 * d_inner)
        x, z = xz.chunk(2, dim=-1)  # (batch, length, d_inner) each

        # Causal depthwise convolution over time; a carried state supplies the previous d_conv - 1 inputs.
        x_t = x.transpose(1, 2)  # (batch, d_inner, length)
        conv_weight = self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        prefix = None if state is None else state.conv_state[:, :, 1:].to(x_t.dtype)
        x_conv = causal_conv1d(x_t, conv_weight, self.conv1d.bias, prefix=prefix, use_kernel=self.use_kernels)
        x_conv = F.silu(x_conv).transpose(1, 2)  # (batch, length, d_inner)

        x_dbl = self.x_proj(x_conv)  # (batch, length, dt_rank + 2 * d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (batch, length, d_inner); the bias goes in as delta_bias
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        scan = selective_scan(
            x_conv, dt, A, B, C, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, initial_state=None if state is None else state.ssm_state,
            return_last_state=return_state, use_kernel=self.use_kernels,
        )
        if not return_state:
            return self.out_proj(scan)
        y, ssm_state = scan
        history = x_t if state is None else torch.cat([state.conv_state.to(x_t.dtype), x_t], dim=-1)
        conv_state = F.pad(history, (max(0, self.d_conv - history.shape[-1]), 0))[:, :, -self.d_conv:]
        return self.out_proj(y), MambaMixerState(conv_state=conv_state, ssm_state=ssm_state)


class StormTemporalBlock(GradientCheckpointingLayer):
    """One pre-norm residual layer: ``x + merge(mixer_fwd(norm(x)), flip(mixer_bwd(flip(norm(x)))))``.

    The two directions have their own mixers (each a full mamba_ssm-compatible Mamba). Forward-only
    layers have ``backward_mixer = None``.
    """

    def __init__(self, config: StormConfig, layer_idx: int):
        super().__init__()
        d_model = config.text_config.hidden_size
        self.bidirectional = config.temporal_bidirectional
        self.merge = config.temporal_direction_merge
        self.norm = nn.LayerNorm(d_model, eps=config.temporal_norm_eps)

        def make_mixer():
            return StormMambaMixer(
                d_model, d_state=config.temporal_d_state, d_conv=config.temporal_d_conv,
                expand=config.temporal_expand, dt_rank=config.temporal_dt_rank,
                conv_bias=config.temporal_conv_bias, bias=config.temporal_bias,
                use_kernels=config.use_mamba_kernels, layer_idx=layer_idx,
            )

        self.forward_mixer = make_mixer()
        self.backward_mixer = make_mixer() if self.bidirectional else None
        self.merge_proj = (
            nn.Linear(2 * d_model, d_model, bias=False) if self.bidirectional and self.merge == "concat" else None
        )

    def forward(self, hidden_states: torch.Tensor, state: MambaMixerState | None = None, return_state: bool = False):
        """hidden_states: (batch, length, dim) -> (batch, length, dim) [, new state (forward-only)]."""
        normed = self.norm(hidden_states)
        if not self.bidirectional:
            out = self.forward_mixer(normed, state=state, return_state=return_state)
            if return_state:
                return hidden_states + out[0], out[1]
            return hidden_states + out
        forward_out = self.forward_mixer(normed)
        backward_out = self.backward_mixer(normed.flip(1)).flip(1)
        if self.merge == "add":
            mixed = forward_out + backward_out
        elif self.merge == "mean":
            mixed = 0.5 * (forward_out + backward_out)
        else:
            mixed = self.merge_proj(torch.cat([forward_out, backward_out], dim=-1))
        return hidden_states + mixed


class StormTemporalEncoder(nn.Module):
    """L `StormTemporalBlock`s and a final LayerNorm over the flattened (frame, row, column) sequence.

    Forward-only encoders can stream: pass the ``state`` returned by the previous call (one
    `MambaMixerState` per layer) and the frames of the next chunk; the outputs equal one call over all
    frames, and each new frame costs the same work however long the stream already is.
    """

    def __init__(self, config: StormConfig):
        super().__init__()
        self.bidirectional = config.temporal_bidirectional
        self.layers = nn.ModuleList(StormTemporalBlock(config, i) for i in range(config.temporal_num_layers))
        self.norm = nn.LayerNorm(config.text_config.hidden_size, eps=config.temporal_norm_eps) if config.temporal_final_norm else None
        self.gradient_checkpointing = False

    def init_state(self, batch_size: int, device=None) -> list[MambaMixerState]:
        """The state before the first frame of a stream (forward-only encoders)."""
        if self.bidirectional:
            raise ValueError("StormTemporalEncoder: streaming needs temporal_bidirectional=False.")
        return [layer.forward_mixer.init_state(batch_size, device) for layer in self.layers]

    def forward(
        self, hidden_states: torch.Tensor, state: list[MambaMixerState] | None = None, return_state: bool = False
    ):
        """
        Args:
            hidden_states: (batch, frames * tokens, dim), frames in time order, tokens in raster order.
            state: per-layer states from the previous chunk (forward-only encoders only).
            return_state: return the per-layer states after this chunk too.
        Returns:
            (batch, frames * tokens, dim) [, list of `MambaMixerState`].
        """
        if (state is not None or return_state) and self.bidirectional:
            raise ValueError(
                "StormTemporalEncoder: a carried state only exists for the forward-only encoder "
                "(temporal_bidirectional=False); a bidirectional scan needs the whole video at once."
            )
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"StormTemporalEncoder: got states for {len(state)} layers, the encoder has {len(self.layers)}.")
        new_state = []
        for i, layer in enumerate(self.layers):
            if return_state:
                hidden_states, layer_state = layer(hidden_states, None if state is None else state[i], True)
                new_state.append(layer_state)
            else:
                hidden_states = layer(hidden_states, None if state is None else state[i])
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
        return (hidden_states, new_state) if return_state else hidden_states


class StormProjector(nn.Module):
    """Downsample + Linear (the paper's replacement for VILA's MLP projector): a ``r x r`` pixel shuffle of
    the patch features, then one Linear to the LLM width."""

    def __init__(self, config: StormConfig):
        super().__init__()
        self.patch_grid = config.vision_config.image_size // config.vision_config.patch_size
        self.ratio = config.downsample_ratio
        self.linear = nn.Linear(
            config.vision_config.hidden_size * self.ratio**2, config.text_config.hidden_size, bias=config.projector_bias
        )

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        """(frames, patch_grid**2, vision_dim) -> (frames, (patch_grid / r)**2, text_dim)."""
        return self.linear(pixel_shuffle(patch_features, self.patch_grid, self.ratio))


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------

# Files a save of the model replaces in a folder it saves over: the weights (single or sharded, safetensors
# or old pickles) and their index. Anything else there is kept.
_REPLACED_WEIGHTS = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


class StormPreTrainedModel(PreTrainedModel):
    config_class = StormConfig
    config: StormConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["StormTemporalBlock"]
    _skip_keys_device_placement = "cache"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _keep_in_fp32_modules_strict = ["A_log", "D"]

    # What `save_pretrained` writes into config.json so that the Auto classes find the flat remote code.
    _remote_auto_map = {
        "AutoConfig": "configuration_storm.StormConfig",
        "AutoModel": "modeling_storm.StormModel",
        "AutoModelForImageTextToText": "modeling_storm.StormForConditionalGeneration",
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers' (safetensors, sharded above `max_shard_size`), plus the remote-code files
        (configuration_storm.py, modeling_storm.py, selective_scan.py) and an `auto_map` for AutoConfig,
        AutoModel and AutoModelForImageTextToText, so `trust_remote_code=True` loads it without storm_hf.

        Over an existing folder the save is all-or-nothing and keeps everything it does not replace:
        the new files are written to a fresh sibling folder, every other entry of the folder (processor and
        tokenizer files, a README, `checkpoint-N` folders, an `adapter_model.safetensors`, ...) is moved
        into it by rename, and the folders are then swapped by rename. Only the files the save rewrites and
        the model weights it replaces (`model*.safetensors`, `pytorch_model*.bin` and their index) go. An
        interrupted save puts everything back and leaves the old checkpoint whole.
        """
        if kwargs.get("safe_serialization") is False:
            raise ValueError("StormPreTrainedModel.save_pretrained writes safetensors only (no pickle files).")
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._remote_auto_map}
        target = os.path.abspath(save_directory)
        if kwargs.get("push_to_hub") or not os.path.isdir(target) or not os.listdir(target):
            return super().save_pretrained(save_directory, *args, **kwargs)
        parent = os.path.dirname(target)
        staging = tempfile.mkdtemp(prefix=os.path.basename(target) + ".saving-", dir=parent)
        previous = os.path.join(parent, os.path.basename(staging).replace(".saving-", ".previous-"))
        carried = []  # entries moved from the folder into the staging folder
        try:
            result = super().save_pretrained(staging, *args, **kwargs)
            written = set(os.listdir(staging))
            for name in sorted(os.listdir(target)):
                if name not in written and not _REPLACED_WEIGHTS.match(name):
                    os.rename(os.path.join(target, name), os.path.join(staging, name))
                    carried.append(name)
            os.rename(target, previous)
            os.rename(staging, target)
        except BaseException:
            if not os.path.isdir(target) and os.path.isdir(previous):
                os.rename(previous, target)
            for name in carried:
                if os.path.lexists(os.path.join(staging, name)):
                    os.rename(os.path.join(staging, name), os.path.join(target, name))
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(previous, ignore_errors=True)  # only what the new save replaced
        return result

    def model_card(self, repo_id: str, base_models: list[str] | None = None) -> str:
        """The README.md `push_to_hub` uploads: Hub metadata (library, pipeline tag, base models, tags), the
        token-reduction settings and how to load the model."""
        c = self.config
        bases = base_models or [n for n in (c.vision_config._name_or_path, c.text_config._name_or_path) if n]
        lines = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "tags:", "- storm",
                 "- video", "- mamba", "- video-llm"]
        if bases:
            lines += ["base_model:"] + [f"- {name}" for name in bases]
        lines += ["---", "", f"# {repo_id.split('/')[-1]}", "",
                  "A STORM video LLM (image encoder -> 2x2 pixel shuffle + Linear -> bidirectional Mamba temporal "
                  "encoder -> token reduction -> LLM), saved with storm_hf.", "",
                  "| setting | value |", "|---|---|",
                  f"| image encoder | {c.vision_config.model_type}, {c.vision_config.image_size} px |",
                  f"| LLM | {c.text_config.model_type}, hidden {c.text_config.hidden_size} |",
                  f"| temporal encoder | {c.temporal_num_layers} layer(s), "
                  f"{'bidirectional' if c.temporal_bidirectional else 'forward-only'}, d_state {c.temporal_d_state} |",
                  f"| temporal pooling k | {c.temporal_pool_k} |", f"| spatial pooling p | {c.spatial_pool_p} |",
                  f"| test-time sampling s | {c.temporal_sample_s} |",
                  f"| visual tokens for 32 frames | {c.num_visual_tokens(32)} (256 per frame before reduction at "
                  "448 px) |", "", "## Load", "", "```python",
                  "from transformers import AutoModelForImageTextToText, AutoProcessor",
                  f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)',
                  f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)',
                  "```", "", "With `pip install storm_hf` and `import storm_hf`, `trust_remote_code` is not needed.", ""]
        return "\n".join(lines)

    def push_to_hub(self, repo_id: str, *, commit_message=None, commit_description=None, private=None, token=None,
                    revision=None, create_pr=False, max_shard_size="50GB", tags=None, base_models=None) -> str:
        """Upload what `save_pretrained` writes (safetensors, config, remote code) plus a model card
        (`model_card`). Save the processor to the same repo with `processor.push_to_hub(repo_id)`."""
        from transformers.utils import hub

        repo_id = hub.hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            card = self.model_card(repo_id, base_models)
            if tags:
                card = card.replace("- video-llm", "- video-llm\n" + "\n".join(f"- {t}" for t in tags), 1)
            with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
                f.write(card)
            return self._upload_modified_files(
                folder, repo_id, files_timestamps={}, commit_message=commit_message or "Upload STORM model",
                token=token, create_pr=create_pr, revision=revision, commit_description=commit_description,
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As transformers', but weights are read from safetensors only: loading never unpickles. A local
        folder holding only pickle weights (pytorch_model.bin, .pt, .pth, .ckpt) is refused by name, and
        unreadable or mismatched weights raise a ValueError naming the checkpoint."""
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path):
            files = os.listdir(os.path.join(path, kwargs.get("subfolder", "") or ""))
            pickles = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")))
            if pickles and not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
                raise ValueError(
                    f"{path}: only pickle weight files ({', '.join(pickles)}); storm_hf loads safetensors only, "
                    "because unpickling can run arbitrary code. Convert them with a trusted loader and "
                    "save_pretrained (which writes safetensors)."
                )
        kwargs["use_safetensors"] = True
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" in str(error):
                raise ValueError(
                    f"{path}: the weights do not have the shapes its config.json describes (see the load report "
                    "above for the tensors); the checkpoint or its config is corrupt or from another model."
                ) from error
            raise
        except Exception as error:
            if type(error).__name__ == "SafetensorError":
                raise ValueError(f"{path}: a safetensors weight file is unreadable or truncated ({error}).") from error
            raise

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, StormMambaMixer):
            module.init_mamba_weights()
            init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
            if module.conv1d.bias is not None:
                init.zeros_(module.conv1d.bias)
            # mamba_ssm's rescale_prenorm_residual: out_proj scaled by 1/sqrt(layers) on the residual path.
            init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                if not getattr(module.out_proj.weight, "_is_hf_initialized", False):
                    module.out_proj.weight /= math.sqrt(self.config.temporal_num_layers)


class StormModel(StormPreTrainedModel):
    """Image encoder, projector, temporal encoder and the LLM backbone (no LM head)."""

    def __init__(self, config: StormConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.projector = StormProjector(config)
        self.temporal_encoder = StormTemporalEncoder(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Image encoder + projector on a flat batch of frames.

        frames: (num_frames, 3, H, W) -> (num_frames, tokens_per_frame, text_dim).
        """
        vision = self.config.vision_config
        expected = (vision.num_channels, vision.image_size, vision.image_size)
        if tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"Frames must be {expected[0]} x {expected[1]} x {expected[2]} (channels, height, width) for this "
                f"model's image encoder, got {tuple(frames.shape[1:])}. Resize with the processor first."
            )
        outputs = self.vision_tower(frames, output_hidden_states=self.config.vision_feature_layer != -1)
        if self.config.vision_feature_layer == -1:
            patch_features = outputs.last_hidden_state  # (num_frames, patches, vision_dim)
        else:
            patch_features = outputs.hidden_states[self.config.vision_feature_layer]
        if patch_features.shape[1] == self.projector.patch_grid**2 + 1:
            patch_features = patch_features[:, 1:]  # CLIP-style encoders prepend a class token: drop it
        return self.projector(patch_features)

    def reduce_tokens(self, encoded: torch.Tensor) -> torch.Tensor:
        """Token reduction after the temporal encoder: (batch, frames, tokens, dim) -> (batch, frames', tokens', dim)."""
        c = self.config
        return reduce_visual_tokens(encoded, c.grid_size, c.temporal_pool_k, c.spatial_pool_p, c.temporal_sample_s)

    def _clips_to_features(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Frames of each clip through the whole visual path.

        clips: list of (frames_i, 3, H, W). Returns a list of (visual_tokens_i, dim), one per clip.
        All frames go through the image encoder as one batch; clips of equal length share a temporal
        encoder call (the bidirectional scan must see exactly one clip's frames, so no padding is used).
        """
        frame_counts = [clip.shape[0] for clip in clips]
        tokens = self.encode_frames(torch.cat(clips, dim=0))  # (sum frames, N, dim)
        per_clip = tokens.split(frame_counts, dim=0)
        features: list[torch.Tensor | None] = [None] * len(clips)
        for count in sorted(set(frame_counts)):
            members = [i for i, n in enumerate(frame_counts) if n == count]
            group = torch.stack([per_clip[i] for i in members])  # (clips, frames, N, dim)
            clips_n, frames, num_tokens, dim = group.shape
            encoded = self.temporal_encoder(group.reshape(clips_n, frames * num_tokens, dim))  # (clips, T*N, dim)
            reduced = self.reduce_tokens(encoded.view(clips_n, frames, num_tokens, dim))  # (clips, T', N', dim)
            for j, i in enumerate(members):
                features[i] = reduced[j].reshape(-1, dim)  # (T' * N', dim)
        return features

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_num_frames: torch.Tensor | list[int] | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """
        Args:
            pixel_values_videos: (num_videos, max_frames, 3, H, W); videos shorter than ``max_frames``
                are padded at the end.
            video_num_frames: (num_videos,) real frame count of each video; None means all ``max_frames``.
        Returns:
            `BaseModelOutputWithPooling` whose ``pooler_output`` is a list with one
            (``config.num_visual_tokens(frames_i)``, dim) tensor per video, ready to scatter.
        """
        if pixel_values_videos.dim() != 5:
            raise ValueError(
                "pixel_values_videos must have shape (num_videos, frames, channels, height, width), "
                f"got {tuple(pixel_values_videos.shape)}."
            )
        num_videos, max_frames = pixel_values_videos.shape[:2]
        counts = _frame_counts(video_num_frames, num_videos, max_frames)
        clips = [pixel_values_videos[i, :n] for i, n in enumerate(counts)]
        return BaseModelOutputWithPooling(pooler_output=self._clips_to_features(clips))

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """
        Args:
            pixel_values: (num_images, 3, H, W). Each image is a one-frame clip (T = 1).
        Returns:
            `BaseModelOutputWithPooling` whose ``pooler_output`` is a list of (num_visual_tokens(1), dim).
        """
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape (num_images, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        return BaseModelOutputWithPooling(pooler_output=self._clips_to_features(list(pixel_values.unsqueeze(1))))

    def get_placeholder_mask(self, input_ids, inputs_embeds, token_id: int, features: torch.Tensor, kind: str):
        """Boolean (batch, seq, 1) mask of the ``token_id`` placeholders; raises a ValueError naming both
        counts when they differ from the number of feature vectors."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == token_id
        n_tokens, n_features = int(mask.sum()), features.shape[0]
        if n_tokens != n_features:
            raise ValueError(
                f"{kind.capitalize()} features and {kind} placeholder tokens do not match: the input has "
                f"{n_tokens} {kind} tokens (id {token_id}) but the {kind}s produce {n_features} features. "
                f"Expand each {kind} placeholder to config.num_visual_tokens(num_frames) tokens (the processor does this)."
            )
        return mask.unsqueeze(-1)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_num_frames: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> MultimodalBaseModelOutputWithPast:
        """
        Args:
            input_ids: (batch, seq) with image / video placeholders already expanded.
            pixel_values: (num_images, 3, H, W), images in the order their placeholders appear.
            pixel_values_videos: (num_videos, max_frames, 3, H, W), videos in placeholder order.
            video_num_frames: (num_videos,) frames of each video when they differ (padded at the end).
            mm_encoder_outputs: pre-computed ``{"image": ..., "video": ...}`` from `get_image_features` /
                `get_video_features` (what `generate()` passes, so frames are encoded once per call).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("StormModel.forward: pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (batch, seq, dim)

        encoded = dict(mm_encoder_outputs or {})
        if encoded.get("image") is None and pixel_values is not None:
            encoded["image"] = self.get_image_features(pixel_values.to(self.vision_tower.dtype))
        if encoded.get("video") is None and pixel_values_videos is not None:
            encoded["video"] = self.get_video_features(pixel_values_videos.to(self.vision_tower.dtype), video_num_frames)

        for kind, token_id in (("image", self.config.image_token_id), ("video", self.config.video_token_id)):
            if encoded.get(kind) is None:
                continue
            features = torch.cat(list(encoded[kind].pooler_output), dim=0)  # (total tokens, dim)
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, token_id, features, kind)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features)

        outputs = self.language_model(
            attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
        )
        return MultimodalBaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state, cache=outputs.cache,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            image_outputs=encoded.get("image"), video_outputs=encoded.get("video"),
        )


def _frame_counts(video_num_frames, num_videos: int, max_frames: int) -> list[int]:
    """Validated per-video frame counts (a list of ints)."""
    if video_num_frames is None:
        return [max_frames] * num_videos
    counts = [int(n) for n in (video_num_frames.tolist() if torch.is_tensor(video_num_frames) else video_num_frames)]
    if len(counts) != num_videos or any(n < 1 or n > max_frames for n in counts):
        raise ValueError(
            f"video_num_frames must give, for each of the {num_videos} videos, a frame count in 1..{max_frames}; got {counts}."
        )
    return counts


class StormForConditionalGeneration(StormPreTrainedModel, GenerationMixin):
    """STORM with the LM head: `forward` returns logits (and the loss when ``labels`` are given); use
    `generate()` for answers. Frames go through the image encoder and temporal encoder once per
    `generate()` call; decoding then uses the KV cache."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: StormConfig):
        super().__init__(config)
        self.model = StormModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str,
        text_model_name_or_path: str,
        *,
        video_token: str = "<video>",
        image_token: str = "<image>",
        return_processor: bool = False,
        dtype: torch.dtype | None = None,
        **storm_options,
    ):
        """STORM built from an existing image encoder and LLM, with a fresh projector and temporal encoder.

        Args:
            vision_model_name_or_path: a SigLIP or CLIP checkpoint (vision-only or dual-encoder).
            text_model_name_or_path: a Qwen2 or Llama causal-LM checkpoint with its tokenizer.
            video_token, image_token: placeholders added to the tokenizer if missing (embeddings are resized).
            return_processor: also return a matching `StormProcessor` (the LLM's tokenizer with the added
                tokens, frames sized and normalised for the image encoder).
            **storm_options: `StormConfig` fields (temporal_num_layers, temporal_pool_k, ...).
        Returns:
            The model, or `(model, processor)` with ``return_processor=True``.

        Weights are read from safetensors only. The model is first built with random weights, then the
        encoder's and the LLM's are copied in, so peak memory is about twice the model for a moment.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.tokenization_utils_base import AddedToken

        from .processing_storm import StormProcessor
        from .video_processing_storm import StormVideoProcessor

        vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
        vision_config = getattr(vision_config, "vision_config", vision_config)  # dual encoders: the vision half
        text_config = AutoConfig.from_pretrained(text_model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
        # The placeholders, and the chat template's turn markers (Llama tokenizers lack Qwen2's), as single tokens.
        missing = [t for t in (video_token, image_token, "<|im_start|>", "<|im_end|>") if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        storm_options.setdefault("tie_word_embeddings", bool(getattr(text_config, "tie_word_embeddings", False)))
        config = StormConfig(
            vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
            video_token_id=tokenizer.convert_tokens_to_ids(video_token),
            image_token_id=tokenizer.convert_tokens_to_ids(image_token), **storm_options,
        )
        config.vision_config._name_or_path = str(vision_model_name_or_path)
        config.text_config._name_or_path = str(text_model_name_or_path)
        model = cls(config)

        vision = AutoModel.from_pretrained(vision_model_name_or_path, use_safetensors=True)
        vision = getattr(vision, "vision_model", vision)  # a dual encoder's vision half
        model.model.vision_tower.load_state_dict(vision.state_dict())
        del vision
        language = AutoModelForCausalLM.from_pretrained(text_model_name_or_path, use_safetensors=True)
        model.model.language_model.load_state_dict(language.model.state_dict())
        model.lm_head.load_state_dict(language.lm_head.state_dict())
        del language
        if len(tokenizer) > config.text_config.vocab_size:
            model.resize_token_embeddings(len(tokenizer))
        model.set_generation_tokens(tokenizer)
        if dtype is not None:
            model = model.to(dtype)
        if not return_processor:
            return model
        side = vision_config.image_size
        mean, std = _image_normalisation(vision_model_name_or_path, vision_config)
        video_processor = StormVideoProcessor(size={"height": side, "width": side}, image_mean=mean, image_std=std)
        processor = StormProcessor.from_config(config, video_processor, tokenizer, video_token=video_token,
                                               image_token=image_token)
        return model, processor

    def set_generation_tokens(self, tokenizer, end_of_turn: str = "<|im_end|>") -> "StormForConditionalGeneration":
        """Make `generate()` stop where the chat template ends an answer, and pad with the tokenizer's pad.

        EOS becomes ``end_of_turn`` (what STORM's chat template closes every turn with) plus the tokenizer's own
        EOS token when it differs; pad is the tokenizer's pad token (else its EOS). Both are written to the
        generation config and to ``config.text_config``, so `save_pretrained` stores them and a model built
        from the saved config gets the same. Returns the model."""
        eos = []
        for token_id in (tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn in tokenizer.get_vocab() else None,
                         tokenizer.eos_token_id):
            if token_id is not None and token_id not in eos:
                eos.append(int(token_id))
        if not eos:
            raise ValueError(f"set_generation_tokens: the tokenizer has neither {end_of_turn} nor an EOS token.")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[-1]
        value = eos[0] if len(eos) == 1 else eos
        self.generation_config.eos_token_id = value
        self.generation_config.pad_token_id = int(pad)
        self.config.text_config.eos_token_id = value
        self.config.text_config.pad_token_id = int(pad)
        return self

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_video_features(self, pixel_values_videos, video_num_frames=None, **kwargs):
        return self.model.get_video_features(pixel_values_videos, video_num_frames, **kwargs)

    def get_image_features(self, pixel_values, **kwargs):
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_num_frames: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> MultimodalCausalLMOutputWithPast:
        """Same inputs as `StormModel.forward`, plus ``labels`` (batch, seq) with -100 where no loss is taken
        (the shift happens inside) and ``logits_to_keep``."""
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, pixel_values_videos=pixel_values_videos,
            video_num_frames=video_num_frames, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs, **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)  # (batch, seq, vocab)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
        return MultimodalCausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, image_outputs=outputs.image_outputs, video_outputs=outputs.video_outputs,
        )


def _image_normalisation(vision_model_name_or_path, vision_config):
    """The encoder's pixel mean/std: from its preprocessor_config.json when it is a local folder that has
    one, else SigLIP's 0.5/0.5 or CLIP's OpenAI statistics by model type."""
    import json

    path = os.path.join(str(vision_model_name_or_path), "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        if "image_mean" in stored and "image_std" in stored:
            return list(stored["image_mean"]), list(stored["image_std"])
    if "clip" in vision_config.model_type:
        return [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


__all__ = [
    "StormPreTrainedModel",
    "StormModel",
    "StormForConditionalGeneration",
    "StormMambaMixer",
    "StormTemporalEncoder",
    "StormTemporalBlock",
    "StormProjector",
    "MambaMixerState",
    "pixel_shuffle",
    "temporal_pool",
    "spatial_pool",
    "temporal_sample_indices",
    "reduce_visual_tokens",
]
