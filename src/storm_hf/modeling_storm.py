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
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .checkpointing_storm import StormCheckpointMixin, StormFromPartsMixin
from .configuration_storm import StormConfig
from .selective_scan import causal_conv1d, conv_kernel_available, fused_mixer_available, mamba_inner, selective_scan


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
    return sums.div_(counts.view(1, groups, 1, 1))  # in place: no second (batch, groups, tokens, dim) tensor


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


def change_scan_order(sequence: torch.Tensor, tokens_per_frame: int | None, to: str) -> torch.Tensor:
    """Regroup a clip's flattened (frame, token) sequence for a scan: ``to="time_major"`` takes raster order
    (batch, frames * tokens, dim) to (batch, tokens * frames, dim), every frame of token 0, then of token 1, ...;
    ``to="raster"`` is its inverse."""
    if tokens_per_frame is None:
        raise ValueError("A time-major temporal layer needs tokens_per_frame (the (frame, token) grid of the clip).")
    batch, length, dim = sequence.shape
    if length % tokens_per_frame:
        raise ValueError(f"A sequence of {length} tokens is not whole frames of {tokens_per_frame} tokens.")
    frames = length // tokens_per_frame
    grid = (frames, tokens_per_frame) if to == "time_major" else (tokens_per_frame, frames)
    return sequence.view(batch, *grid, dim).transpose(1, 2).reshape(batch, length, dim)


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


class StreamingTokenReducer:
    """`reduce_visual_tokens` for frames that arrive in pieces: `push` the temporal encoder's output for the next
    frames and get the reduced tokens of every k-window they complete (after test-time sampling s); `finish` (or
    `peek`, which keeps the frames) gives the last, partial window's tokens, the mean of the frames it has, as
    the one-shot reduction does. Concatenated, the pieces equal ``reduce_visual_tokens`` over all frames."""

    def __init__(self, grid_size: int, k: int, p: int, s: int):
        self.grid_size, self.k, self.p, self.s = grid_size, k, p, s
        self.pending = None  # (frames, N, dim): encoded frames of the window not yet complete
        self.windows = 0  # complete windows so far (sampled or not)
        self.frames = 0  # frames pushed so far

    def _reduce(self, frames: torch.Tensor, first_window: int) -> torch.Tensor:
        """(frames, N, dim) starting at window ``first_window`` -> (kept windows * N', dim)."""
        windows = reduce_visual_tokens(frames[None], self.grid_size, self.k, self.p, 1)[0]  # (windows, N', dim)
        keep = [i for i in range(windows.shape[0]) if (first_window + i) % self.s == 0]
        if len(keep) < windows.shape[0]:
            windows = windows[keep]
        return windows.flatten(0, 1)

    def push(self, encoded: torch.Tensor) -> torch.Tensor:
        """(frames, N, dim) -> the reduced tokens (tokens, dim) of the windows these frames complete (possibly
        none: (0, dim))."""
        self.frames += encoded.shape[0]
        pending = encoded if self.pending is None else torch.cat([self.pending, encoded])
        complete = pending.shape[0] // self.k * self.k
        out = self._reduce(pending[:complete], self.windows) if complete else pending.new_zeros(0, pending.shape[-1])
        self.windows += complete // self.k
        self.pending = pending[complete:].clone() if complete < pending.shape[0] else None
        return out

    def peek(self) -> torch.Tensor | None:
        """The partial window's reduced tokens (None when no frame waits), keeping its frames for later pushes."""
        if self.pending is None:
            return None
        return self._reduce(self.pending, self.windows)

    def finish(self) -> torch.Tensor | None:
        """The partial window's reduced tokens (None when no frame waits); the reducer then holds no frames."""
        out = self.peek()
        self.pending = None
        return out



@dataclass
class StormVideoFeatures(BaseModelOutputWithPooling):
    """`StormModel.encode_video`'s output: ``pooler_output``, a list with the video's (visual tokens, dim)
    features (what ``generate(..., mm_encoder_outputs={"video": ...})`` places), and ``video_num_frames`` (1,),
    the frames it was encoded from (``processor(text=..., video_num_frames=...)`` expands the prompt for them)."""

    video_num_frames: torch.LongTensor | None = None


def _write_tokens(buffer: torch.Tensor, offset: int, tokens: torch.Tensor | None) -> int:
    """Write ``tokens`` (n, ...) into ``buffer`` at row ``offset``; returns the offset after them."""
    if tokens is None or tokens.shape[0] == 0:
        return offset
    buffer[offset:offset + tokens.shape[0]] = tokens
    return offset + tokens.shape[0]


def _progress_reporter(progress, total: int | None, description: str):
    """``report(done)`` after each chunk and ``report(None)`` at the end, for `encode_video`'s ``progress``."""
    if progress is False:
        return lambda done: None
    if callable(progress) and progress is not True:
        return lambda done: None if done is None else progress(done, total)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.tqdm(total=total, unit="frame", desc=description)
    shown = [0]

    def report(done):
        if done is None:
            bar.close()
        else:
            bar.update(done - shown[0])
            shown[0] = done

    return report


# ----------------------------------------------------------------------------------------------------
# Temporal encoder: Mamba-1 mixer with mamba_ssm's parameter names, pre-norm blocks, streaming state
# ----------------------------------------------------------------------------------------------------


@dataclass
class MambaMixerState:
    """State a forward-only mixer carries between calls. conv_state: (batch, d_inner, d_conv), the last
    d_conv inputs of the convolution; ssm_state: (batch, d_inner, d_state) fp32. Same layout as mamba_ssm's
    inference cache (`Mamba.allocate_inference_cache`)."""

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


def init_mamba_mixer(mixer: "StormMambaMixer", residual_scale: float = 1.0):
    """mamba_ssm's initialisation of one mixer: `Mamba.__init__` (PyTorch's default Linear / Conv1d init
    for the projections and the convolution, S4D-real A, D = 1, dt_proj as below) followed by what
    `mixer_seq_simple._init_weights(rescale_prenorm_residual=True)` changes: Linear biases zeroed (except
    dt_proj's), out_proj drawn again and divided by ``residual_scale`` (sqrt(residuals per layer * layers)).

    * in_proj, x_proj: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)); biases 0.
    * conv1d: weight and bias U(-1/sqrt(d_conv), 1/sqrt(d_conv)) (depthwise: fan_in = d_conv).
    * dt_proj.weight: U(-s, s) (or the constant s) with s = dt_rank**-0.5 * dt_scale; dt_proj.bias: the
      inverse softplus of dt = exp(U(log dt_min, log dt_max)) clamped at dt_init_floor.
    * A_log[d, n] = log(n + 1); D = 1 (both fp32).
    * out_proj.weight: U(-b, b) with b = 1 / sqrt(d_inner) / residual_scale; bias 0.

    Every draw goes through `transformers.initialization`, so parameters loaded from a checkpoint are never
    overwritten, and a model built or loaded with missing weights gets the same distributions.
    """
    if mixer.A_log.is_meta:
        return  # materialised later, when PreTrainedModel initialises the missing weights
    partitioned = [p for p in mixer.parameters() if hasattr(p, "ds_id")]
    if partitioned:  # built inside DeepSpeed ZeRO-3's zero.Init: each rank holds a slice; draw on rank 0, share
        # DeepSpeed is imported already (it partitioned them); no import statement, which transformers' remote-code
        # loader would turn into a requirement for everyone.
        deepspeed = sys.modules["deepspeed"]
        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
            _init_mamba_mixer(mixer, residual_scale)
        return
    _init_mamba_mixer(mixer, residual_scale)


def _init_mamba_mixer(mixer: "StormMambaMixer", residual_scale: float) -> None:
    for linear in (mixer.in_proj, mixer.x_proj):
        if linear is None:
            continue  # a backward SSM that shares the forward mixer's projections
        bound = 1 / math.sqrt(linear.in_features)
        init.uniform_(linear.weight, -bound, bound)
        if linear.bias is not None:
            init.zeros_(linear.bias)
    conv_bound = 1 / math.sqrt(mixer.d_conv)  # fan_in of a depthwise kernel: 1 channel x d_conv taps
    init.uniform_(mixer.conv1d.weight, -conv_bound, conv_bound)
    if mixer.conv1d.bias is not None:
        init.uniform_(mixer.conv1d.bias, -conv_bound, conv_bound)
    dt_init_std = mixer.dt_rank**-0.5 * mixer.dt_scale
    if mixer.dt_init == "constant":
        init.constant_(mixer.dt_proj.weight, dt_init_std)
    else:
        init.uniform_(mixer.dt_proj.weight, -dt_init_std, dt_init_std)
    with torch.no_grad():
        dt = torch.exp(
            torch.rand(mixer.d_inner, dtype=torch.float32, device=mixer.dt_proj.bias.device)
            * (math.log(mixer.dt_max) - math.log(mixer.dt_min))
            + math.log(mixer.dt_min)
        ).clamp(min=mixer.dt_init_floor)
        inverse_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        A = torch.arange(1, mixer.d_state + 1, dtype=torch.float32, device=mixer.A_log.device)
    init.copy_(mixer.dt_proj.bias, inverse_softplus_dt)
    init.copy_(mixer.A_log, torch.log(A).expand(mixer.d_inner, -1))
    init.ones_(mixer.D)
    if mixer.out_proj is not None:
        out_bound = 1 / math.sqrt(mixer.out_proj.in_features) / residual_scale
        init.uniform_(mixer.out_proj.weight, -out_bound, out_bound)
        if mixer.out_proj.bias is not None:
            init.zeros_(mixer.out_proj.bias)


class StormMambaMixer(nn.Module):
    """A Mamba-1 mixer computing the same function as ``mamba_ssm.modules.mamba_simple.Mamba`` on
    ``(batch, length, d_model)``, with its parameter names, shapes and initialisation, so weights move both
    ways.

    Parameters: ``in_proj`` (2*d_inner, d_model), ``conv1d`` (d_inner, 1, d_conv) depthwise,
    ``x_proj`` (dt_rank + 2*d_state, d_inner), ``dt_proj`` (d_inner, dt_rank) + bias, ``A_log``
    (d_inner, d_state), ``D`` (d_inner,), ``out_proj`` (d_model, d_inner). `A_log` and `D` stay fp32
    whatever the model's dtype (also through ``.to(dtype)``) and take no weight decay, as in mamba_ssm.
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
        projections: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"StormMambaMixer: dt_init must be 'random' or 'constant', got {dt_init!r}.")
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

        # projections=False: only the convolution and the SSM (x, z -> y), for a direction that shares another
        # mixer's in_proj / out_proj (temporal_share_projections).
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory) if projections else None
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1,
            bias=conv_bias, **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory) if projections else None
        for part in (self.in_proj, self.conv1d, self.x_proj, self.dt_proj, self.out_proj):
            if part is not None:
                part._storm_mamba_part = True  # initialised with the mixer (init_mamba_mixer), not on its own
        init_mamba_mixer(self)

    def _apply(self, fn, recurse=True):
        # A_log and D stay fp32 through .to(dtype) / .half() / .bfloat16(): exp(A) and the D skip need it. Their
        # fp32 values are kept from before the conversion (a round trip through bf16 would keep the dtype and lose
        # the digits) and moved to wherever the conversion put them.
        before = {name: getattr(self, name).data for name in ("A_log", "D")}
        super()._apply(fn, recurse)
        for name, values in before.items():
            parameter = getattr(self, name)
            if parameter.dtype != torch.float32:
                fp32 = values if values.dtype == torch.float32 else parameter.data
                parameter.data = fp32.to(device=parameter.device, dtype=torch.float32)
        return self

    def init_state(self, batch_size: int, device=None) -> MambaMixerState:
        """An all-zero state: the state before the first token of a stream."""
        device = device if device is not None else self.A_log.device
        return MambaMixerState(
            conv_state=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=self.conv1d.weight.dtype),
            ssm_state=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def runs_fused(self, hidden_states: torch.Tensor) -> bool:
        """Whether `forward` on ``hidden_states`` runs as mamba_ssm's fused `mamba_inner_fn` (CUDA only).

        The fused kernel reads the projections' and the convolution's weights itself, so it only runs when every
        part is a plain `nn.Linear` / `nn.Conv1d` with its weights in memory: a part wrapped by PEFT (LoRA), given
        an accelerate offload hook, or replaced by a serving engine's layer is called as a module instead."""
        return self.use_kernels and self.in_proj is not None and fused_mixer_available(hidden_states) and all(
            _is_plain(part) for part in (self.in_proj, self.conv1d, self.x_proj, self.dt_proj, self.out_proj))

    def forward(
        self, hidden_states: torch.Tensor, state: MambaMixerState | None = None, inner: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, MambaMixerState]:
        """(batch, length, d_model) -> (batch, length, d_model).

        Args:
            hidden_states: (batch, length, d_model); with ``inner`` (always for a mixer built with
                ``projections=False``) the output of a shared in_proj instead, (batch, length, 2 * d_inner).
            state: the state the previous chunk of a stream left; None: the sequence starts here.
            inner: skip in_proj and out_proj: xz (batch, length, 2 * d_inner) -> the gated SSM output
                (batch, length, d_inner).
        Returns:
            The output; with a ``state``, (output, the state after the last token).

        Every part is called as a module (never its ``.weight`` read), so PEFT adapters, accelerate's offload
        hooks and serving engines' layer replacements see every call; the only exception is mamba_ssm's fused
        kernel on CUDA, which runs only when every part is plain (`runs_fused`).
        """
        inner = inner or self.in_proj is None
        if state is None and not inner and self.runs_fused(hidden_states):
            return mamba_inner(hidden_states, self)  # mamba_ssm's fused path, on CUDA only
        xz = hidden_states if inner else self.in_proj(_projection_input(self.in_proj, hidden_states))
        # xz: (batch, length, 2 * d_inner)
        x, z = xz.chunk(2, dim=-1)  # (batch, length, d_inner) each
        y, new_state = self._ssm(x, z, state)  # (batch, length, d_inner)
        out = y if inner else self.out_proj(_projection_input(self.out_proj, y))
        return out if state is None else (out, new_state)

    def stream(self, hidden_states: torch.Tensor, state: MambaMixerState | None) -> tuple[torch.Tensor, MambaMixerState]:
        """One chunk of a stream: (batch, length, d_model) and the state the previous chunk left (None: the
        stream starts here) -> the chunk's output and the state after its last token. Chunk by chunk, the
        outputs equal one `forward` over the whole stream (and `Mamba.step` token by token)."""
        if state is None:
            state = self.init_state(hidden_states.shape[0], hidden_states.device)
        return self(hidden_states, state)

    def _ssm(self, x: torch.Tensor, z: torch.Tensor, state: MambaMixerState | None):
        """The mixer between its projections: x, z (batch, length, d_inner) -> y (batch, length, d_inner), and
        the state after the last token when a ``state`` came in (else None). Runs inside `forward` only (offload
        hooks materialise `A_log` and `D` for the duration of `forward`)."""
        # Causal depthwise convolution over time; a carried state supplies the previous d_conv - 1 inputs.
        x_t = x.transpose(1, 2)  # (batch, d_inner, length)
        length = x_t.shape[-1]
        if state is None and self.use_kernels and _is_plain(self.conv1d) and conv_kernel_available(x_t):
            x_conv = causal_conv1d(x_t, self.conv1d.weight.squeeze(1), self.conv1d.bias)  # causal_conv1d's kernel
        elif state is None:
            x_conv = self.conv1d(x_t)[..., :length]  # padded d_conv - 1 on both sides: keep the causal outputs
        else:
            prefix = state.conv_state[:, :, 1:].to(x_t.dtype)  # (batch, d_inner, d_conv - 1)
            x_full = torch.cat([prefix, x_t], dim=-1)  # (batch, d_inner, d_conv - 1 + length)
            x_conv = self.conv1d(x_full)[..., self.d_conv - 1:self.d_conv - 1 + length]
        x_conv = F.silu(x_conv).transpose(1, 2)  # (batch, length, d_inner)

        x_dbl = self.x_proj(_projection_input(self.x_proj, x_conv))  # (batch, length, dt_rank + 2 * d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj with its bias, as a module call (transformers' MambaMixer does the same off its fused path);
        # mamba_ssm instead adds the bias inside the scan in fp32: identical in fp32, a rounding of the sum apart
        # in bf16.
        dt = self.dt_proj(_projection_input(self.dt_proj, dt))  # (batch, length, d_inner)
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        scan = selective_scan(
            x_conv, dt, A, B, C, D=self.D.float(), z=z, delta_bias=None, delta_softplus=True,
            initial_state=None if state is None else state.ssm_state,
            return_last_state=state is not None, use_kernel=self.use_kernels,
        )
        if state is None:
            return scan, None
        y, ssm_state = scan
        history = torch.cat([state.conv_state.to(x_t.dtype), x_t], dim=-1)  # (batch, d_inner, d_conv + length)
        return y, MambaMixerState(conv_state=history[:, :, -self.d_conv:], ssm_state=ssm_state)


def _projection_input(projection: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``projection`` can take it. nn.Linear (PEFT's LoRA layers too: they wrap one) multiplies strided
    inputs as they are, and copying a transposed (length, d_inner) input first costs more than the matmul
    (44 ms against 17 ms at 2,048 x 2,048 on one core). Other layers, such as the GEMMs serving engines swap in
    for nn.Linear, may take only row-contiguous inputs (vLLM's CPU GEMM refuses a transposed one): for them a
    strided input is copied."""
    if isinstance(projection, nn.Linear) or isinstance(getattr(projection, "base_layer", None), nn.Linear):
        return x
    return x if x.stride(-1) == 1 else x.contiguous()


def _is_plain(module: nn.Module) -> bool:
    """A bare nn.Linear / nn.Conv1d with its weights in memory: no PEFT wrapper, no accelerate hook, no
    replacement layer, not on the meta device (what a fused kernel that reads `.weight` itself needs)."""
    return (type(module) in (nn.Linear, nn.Conv1d) and not hasattr(module, "_hf_hook")
            and not module.weight.is_meta)


def _filled(whole: torch.Tensor | None, part: torch.Tensor, start: int, total: int) -> torch.Tensor:
    """Writes ``part`` (frames, ...) into ``whole`` (total, ...) at ``start``; the first part allocates it."""
    if whole is None:
        whole = part.new_empty((total, *part.shape[1:]))
    whole[start:start + part.shape[0]] = part
    return whole


def _in_chunks(step, sequence: torch.Tensor, chunk: int, reverse: bool = False, add_to: torch.Tensor | None = None):
    """Runs ``step(piece, state) -> (output, state)`` over (batch, length, dim) in pieces of ``chunk`` tokens,
    each starting from the state the previous one left (None before the first), and returns the outputs in
    sequence order. ``reverse``: the scan reads the sequence from its end (each piece flipped, so nothing of
    the whole length is flipped or copied); ``add_to``: the outputs are added into that tensor instead."""
    length = sequence.shape[1]
    starts = range(0, length, chunk)
    result, state = add_to, None
    for start in reversed(starts) if reverse else starts:
        piece = sequence[:, start:start + chunk]  # (batch, <= chunk, dim)
        out, state = step(piece.flip(1) if reverse else piece, state)
        out = out.flip(1) if reverse else out
        if result is None:  # the first piece tells the output width
            result = out.new_empty(sequence.shape[0], length, out.shape[-1])
        if add_to is None:
            result[:, start:start + chunk] = out
        else:
            result[:, start:start + chunk] += out
    return result


class StormTemporalBlock(GradientCheckpointingLayer):
    """One pre-norm residual layer over the flattened (frame, row, column) sequence.

    Bidirectional (the paper's main design): two independent mixers, each a full mamba_ssm `Mamba` with
    its own projections, convolution and SSM parameters; one reads the sequence forward, the other reads
    it reversed, and their outputs are merged (`temporal_direction_merge`: add, mean, or a Linear over the
    concatenation) before the residual::

        x + merge(forward_mixer(norm(x)), flip(backward_mixer(flip(norm(x)))))

    With `temporal_share_projections=True` the block is Vision Mamba's instead: one in_proj and one out_proj
    shared by the directions, each direction with its own convolution and SSM parameters, merged (add or
    mean) before the shared out_proj. Forward-only layers (`temporal_bidirectional=False`) are ``x + forward_mixer(norm(x))``,
    have ``backward_mixer = None`` and can `stream`.
    """

    def __init__(self, config: StormConfig):
        super().__init__()
        d_model = config.text_config.hidden_size
        self.bidirectional = config.temporal_bidirectional
        self.merge = config.temporal_direction_merge
        self.norm = nn.LayerNorm(d_model, eps=config.temporal_norm_eps)

        def make_mixer(projections=True):  # projections=False: a direction of Vision Mamba's shared layout
            return StormMambaMixer(
                d_model, d_state=config.temporal_d_state, d_conv=config.temporal_d_conv,
                expand=config.temporal_expand, dt_rank=config.temporal_dt_rank,
                conv_bias=config.temporal_conv_bias, bias=config.temporal_bias,
                use_kernels=config.use_mamba_kernels, projections=projections,
                dt_min=config.temporal_dt_min, dt_max=config.temporal_dt_max, dt_init=config.temporal_dt_init,
                dt_scale=config.temporal_dt_scale, dt_init_floor=config.temporal_dt_init_floor,
            )

        self.share_projections = self.bidirectional and config.temporal_share_projections
        self.forward_mixer = make_mixer()
        self.backward_mixer = make_mixer(projections=not self.share_projections) if self.bidirectional else None
        self.merge_proj = (
            nn.Linear(2 * d_model, d_model, bias=False) if self.bidirectional and self.merge == "concat" else None
        )
        self.inference_chunk_tokens = config.temporal_inference_chunk_tokens

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, length, dim) -> (batch, length, dim): each direction runs its mixer over the sequence (whole,
        or in chunks that carry the state), the directions are merged once, then the residual."""
        # Without gradients, long sequences go through each direction in chunks that carry the scan and
        # convolution state (as `stream` does): the same outputs, but the norm's output and the mixer's
        # d_inner-wide intermediates exist for one chunk at a time instead of for every token of the video. Not
        # where mamba_ssm's fused path runs: its scan takes no initial state, and it does not hold those
        # intermediates anyway.
        chunk = self.inference_chunk_tokens
        if (chunk is None or torch.is_grad_enabled() or hidden_states.shape[1] <= chunk
                or self.forward_mixer.runs_fused(hidden_states)):
            chunk = None
        # Vision Mamba layout: the shared in_proj feeds both directions' convolution and SSM (once for the whole
        # sequence, or per chunk), and the merged (batch, length, d_inner) result goes through the shared out_proj.
        shared = self.forward_mixer.in_proj if self.share_projections else None
        if chunk is None:
            sequence, project = self.norm(hidden_states), None  # (batch, length, dim)
            if shared is not None:
                sequence = shared(sequence)  # (batch, length, 2 * d_inner)
        else:  # each chunk normalised (and projected) as it is read
            sequence = hidden_states
            project = self.norm if shared is None else (lambda piece: shared(self.norm(piece)))
        sums = self.merge in ("add", "mean")
        mixed = self._direction(self.forward_mixer, sequence, chunk, project)
        if self.backward_mixer is not None:
            backward = self._direction(self.backward_mixer, sequence, chunk, project, reverse=True,
                                       add_to=mixed if sums and chunk is not None else None)
            if self.merge == "concat":
                mixed = self.merge_proj(torch.cat([mixed, backward], dim=-1))
            elif chunk is None:
                mixed = mixed + backward if self.merge == "add" else 0.5 * (mixed + backward)
            elif self.merge == "mean":
                mixed.mul_(0.5)  # the backward outputs were added into `mixed` chunk by chunk
        if self.share_projections:
            mixed = self.forward_mixer.out_proj(mixed)
        if chunk is not None:
            return mixed.add_(hidden_states)  # `mixed` is this call's own: no third sequence-long tensor
        return hidden_states + mixed

    def _direction(self, mixer: StormMambaMixer, sequence: torch.Tensor, chunk: int | None, project=None,
                   reverse: bool = False, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """One direction: ``mixer`` over (batch, length, dim) read forward or, with ``reverse``, from its end,
        whole (``chunk`` None) or in chunks of ``chunk`` tokens carrying the state; outputs in sequence order.
        ``project``: applied to each chunk first (the norm, and the shared in_proj in Vision Mamba's layout,
        where the mixer then runs without projections);
        ``add_to``: chunked outputs are added into that tensor, which is returned."""
        inner = self.share_projections

        def run(piece, state):  # (batch, n, dim) -> the mixer's output on it (and the state after it)
            return mixer(piece if project is None else project(piece), state, inner=inner)

        if chunk is None:
            out = run(sequence.flip(1) if reverse else sequence, None)
            return out.flip(1) if reverse else out
        return _in_chunks(
            lambda piece, state: run(piece, state if state is not None else mixer.init_state(piece.shape[0], piece.device)),
            sequence, chunk, reverse=reverse, add_to=add_to,
        )

    @torch.no_grad()
    def forward_overwriting(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`forward` without gradients that writes the layer's output over ``hidden_states`` (batch, length, dim)
        and returns it: the long-video path (`StormModel.encode_video`), where the layer then holds no second
        sequence-long tensor. Chunk by chunk (`temporal_inference_chunk_tokens`): a bidirectional layer first reads
        the sequence backward keeping only the state where each chunk starts, then reads it forward, running both
        directions on each chunk (the backward one again, from its saved state) and adding their merged output
        into the chunk; the same outputs as `forward`, for one more pass of the backward mixer."""
        batch, length, _ = hidden_states.shape
        chunk = self.inference_chunk_tokens or length
        shared = self.forward_mixer.in_proj if self.share_projections else None
        inner = self.share_projections
        starts = range(0, length, chunk)

        def prepare(piece):  # (batch, n, dim) -> the mixers' input: normalised (and through the shared in_proj)
            normed = self.norm(piece)
            return normed if shared is None else shared(normed)

        backward_from = {}  # chunk start -> the backward direction's state before it reads that chunk
        if self.backward_mixer is not None:
            state = self.backward_mixer.init_state(batch, hidden_states.device)
            for start in reversed(starts):
                backward_from[start] = state
                _, state = self.backward_mixer(prepare(hidden_states[:, start:start + chunk]).flip(1), state,
                                               inner=inner)
                # keep the state only, not the chunk-long convolution input its conv_state is a view of
                state = MambaMixerState(conv_state=state.conv_state.clone(), ssm_state=state.ssm_state)
        state = self.forward_mixer.init_state(batch, hidden_states.device)
        for start in starts:
            piece = hidden_states[:, start:start + chunk]  # a view: the output is written here
            x = prepare(piece)
            mixed, state = self.forward_mixer(x, state, inner=inner)
            if self.backward_mixer is not None:
                backward = self.backward_mixer(x.flip(1), backward_from.pop(start), inner=inner)[0].flip(1)
                if self.merge == "concat":
                    mixed = self.merge_proj(torch.cat([mixed, backward], dim=-1))
                else:
                    mixed = mixed + backward
                    if self.merge == "mean":
                        mixed.mul_(0.5)
            if self.share_projections:
                mixed = self.forward_mixer.out_proj(mixed)
            piece.add_(mixed)
        return hidden_states

    def stream(self, hidden_states: torch.Tensor, state: MambaMixerState | None) -> tuple[torch.Tensor, MambaMixerState]:
        """One chunk of a stream (forward-only layers): (output, state after the chunk)."""
        if self.bidirectional:
            raise ValueError("StormTemporalBlock: a bidirectional layer needs the whole sequence; it cannot stream.")
        out, state = self.forward_mixer.stream(self.norm(hidden_states), state)
        return hidden_states + out, state


class StormTemporalEncoder(nn.Module):
    """L `StormTemporalBlock`s and a final LayerNorm over the flattened (frame, row, column) sequence; with
    L = 0 the identity (the baseline without a temporal encoder).

    Forward-only encoders can `stream`: give each chunk of frames with the states the previous chunk left
    (one `MambaMixerState` per layer); the outputs equal one call over all frames, and each new frame costs
    the same work however long the stream already is.
    """

    def __init__(self, config: StormConfig):
        super().__init__()
        self.bidirectional = config.temporal_bidirectional
        self.layers = nn.ModuleList(StormTemporalBlock(config) for _ in range(config.temporal_num_layers))
        # The order each layer scans the (frame, token) grid in: "raster" or "time_major" (temporal_scan_order).
        self.scan_orders = [config.temporal_layer_order(i) for i in range(config.temporal_num_layers)]
        # No layers (temporal_num_layers=0, the baseline without a temporal encoder): no final norm either.
        final_norm = config.temporal_final_norm and config.temporal_num_layers > 0
        self.norm = nn.LayerNorm(config.text_config.hidden_size, eps=config.temporal_norm_eps) if final_norm else None

    def _check_streamable(self):
        if self.bidirectional:
            raise ValueError(
                "StormTemporalEncoder: a carried state only exists for the forward-only encoder "
                "(temporal_bidirectional=False); a bidirectional scan needs the whole video at once."
            )
        if "time_major" in self.scan_orders:
            raise ValueError("StormTemporalEncoder: time-major layers (temporal_scan_order) read every frame of one "
                             "position before the next position, so they cannot stream; use 'raster'.")

    def init_state(self, batch_size: int, device=None) -> list[MambaMixerState]:
        """The state before the first frame of a stream (forward-only raster encoders)."""
        self._check_streamable()
        return [layer.forward_mixer.init_state(batch_size, device) for layer in self.layers]

    def forward(self, hidden_states: torch.Tensor, tokens_per_frame: int | None = None,
                overwrite_input: bool = False) -> torch.Tensor:
        """(batch, frames * tokens, dim) -> (batch, frames * tokens, dim); frames in time order, tokens in
        raster order inside a frame. Time-major layers (`temporal_scan_order`) need ``tokens_per_frame``: the
        sequence is regrouped by position for them and back afterwards. ``overwrite_input`` (no gradients; the
        long-video path): each layer writes its output over its input (`StormTemporalBlock.forward_overwriting`),
        so raster layouts hold one sequence-long tensor, the given one, which is returned holding the output
        (regrouping for a time-major layer still makes a copy)."""
        if overwrite_input and torch.is_grad_enabled():
            raise ValueError("StormTemporalEncoder: overwrite_input is for inference only (no gradients).")
        order = "raster"
        for layer, layer_order in zip(self.layers, self.scan_orders):
            if layer_order != order:
                hidden_states = change_scan_order(hidden_states, tokens_per_frame, layer_order)
                order = layer_order
            hidden_states = layer.forward_overwriting(hidden_states) if overwrite_input else layer(hidden_states)
        if order != "raster":
            hidden_states = change_scan_order(hidden_states, tokens_per_frame, "raster")
        if self.norm is None:
            return hidden_states
        if not overwrite_input:
            return self.norm(hidden_states)
        step = self.layers[0].inference_chunk_tokens or hidden_states.shape[1]
        for start in range(0, hidden_states.shape[1], step):  # normalised in place, a chunk at a time
            piece = hidden_states[:, start:start + step]
            piece.copy_(self.norm(piece))
        return hidden_states

    def stream(
        self, hidden_states: torch.Tensor, state: list[MambaMixerState] | None = None
    ) -> tuple[torch.Tensor, list[MambaMixerState]]:
        """One chunk (batch, chunk frames * tokens, dim) of a stream and the per-layer states the previous chunk
        left (None: the stream starts here) -> (the chunk's output, the per-layer states after it)."""
        self._check_streamable()
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"StormTemporalEncoder: got states for {len(state)} layers, the encoder has {len(self.layers)}.")
        new_state = []
        for i, layer in enumerate(self.layers):
            hidden_states, layer_state = layer.stream(hidden_states, None if state is None else state[i])
            new_state.append(layer_state)
        return (hidden_states if self.norm is None else self.norm(hidden_states)), new_state


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

class StormPreTrainedModel(StormCheckpointMixin, PreTrainedModel):
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

    _can_compile_fullgraph = True

    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers protects custom code whose `_init_weights` writes parameters in place by skipping, on
        # load, every module without parameters of its own; SigLIP initialises its attention and MLP Linears
        # from those parent modules, so missing weights would get another init than at construction. Our
        # `_init_weights` goes through `transformers.initialization` (which never overwrites loaded weights),
        # so STORM is initialised like an in-library model on both paths.
        return False

    def _init_weights(self, module):
        if isinstance(module, StormMambaMixer):
            init_mamba_mixer(module, residual_scale=self._mixer_residual_scale())
        elif getattr(module, "_storm_mamba_part", False):
            return  # a mixer's projection or convolution: initialised with its mixer, mamba_ssm's way
        else:
            super()._init_weights(module)

    def _mixer_residual_scale(self) -> float:
        """mamba_ssm's `rescale_prenorm_residual`: out_proj divided by sqrt(residual writes per layer * layers).
        Both directions of a bidirectional layer write into its residual, so they count as two."""
        writes = 2 if self.config.temporal_bidirectional else 1
        return math.sqrt(writes * max(1, self.config.temporal_num_layers))


class StormModel(StormPreTrainedModel):
    """Image encoder, projector, temporal encoder and the LLM backbone (no LM head).

    The visual path, one method per stage (`get_video_features` chains them; the demo and the benchmarks
    time them one by one)::

        run_vision_tower      (frames, 3, H, W)        -> encoder outputs, (frames, patches, vision_dim)
        select_patch_features encoder outputs          -> (frames, patches, vision_dim)
                              (both over config.vision_frames_per_batch frames at a time: vision_patch_features)
        projector             pixel shuffle + Linear   -> (frames, N, dim)
        encode_in_time        per clip (T_i, N, dim)   -> per clip (T_i, N, dim)    the temporal encoder
        reduce_tokens         (clips, T, N, dim)       -> (clips, T', N', dim)      pooling k, p, sampling s
    """

    def __init__(self, config: StormConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.projector = StormProjector(config)
        self.temporal_encoder = StormTemporalEncoder(config)
        self.language_model = AutoModel.from_config(config.text_config)
        # True only while this model drafts for another STORM in assisted decoding (see
        # `StormForConditionalGeneration.generate`): placeholders without pixels then run as text.
        self._placeholders_as_text = False
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # -- the visual path, stage by stage --------------------------------------------------------------

    def run_vision_tower(self, frames: torch.Tensor, **kwargs):
        """The image encoder on a flat batch of frames (num_frames, 3, H, W); returns its outputs (with
        ``hidden_states`` when `vision_feature_layer` picks one, or when asked by ``output_hidden_states``)."""
        vision = self.config.vision_config
        expected = (vision.num_channels, vision.image_size, vision.image_size)
        if frames.dim() != 4 or tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"Frames must be {expected[0]} x {expected[1]} x {expected[2]} (channels, height, width) for this "
                f"model's image encoder, got {tuple(frames.shape[1:])}. Resize with the processor first."
            )
        if self.config.vision_feature_layer is not None:
            kwargs["output_hidden_states"] = True
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        return self.vision_tower(frames.to(self.vision_tower.dtype), return_dict=True, **kwargs)

    def select_patch_features(self, vision_outputs) -> torch.Tensor:
        """(num_frames, patches, vision_dim): the encoder's output after its final norm (`last_hidden_state`)
        when `vision_feature_layer` is None, else ``hidden_states[vision_feature_layer]`` (as LLaVA models read
        it). A class token (CLIP) is dropped: the pixel shuffle needs the patch grid only."""
        layer = self.config.vision_feature_layer
        features = vision_outputs.last_hidden_state if layer is None else vision_outputs.hidden_states[layer]
        if features.shape[1] == self.projector.patch_grid**2 + 1:
            features = features[:, 1:]  # (num_frames, patch_grid**2, vision_dim)
        return features

    def vision_patch_features(self, frames: torch.Tensor) -> torch.Tensor:
        """`run_vision_tower` + `select_patch_features` over (num_frames, 3, H, W) in micro-batches of
        `config.vision_frames_per_batch` frames -> (num_frames, patches, vision_dim)."""
        step = max(1, self.config.vision_frames_per_batch or frames.shape[0])
        features = None
        for start in range(0, frames.shape[0], step):
            chunk = self.select_patch_features(self.run_vision_tower(frames[start:start + step]))
            features = _filled(features, chunk, start, frames.shape[0])
        return features

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Image encoder + projector on a flat batch of frames: (num_frames, 3, H, W) -> (num_frames, N, dim),
        in micro-batches of `config.vision_frames_per_batch` frames."""
        return self._encode_frames_in_batches(frames)[1]

    def _encode_frames_in_batches(self, frames: torch.Tensor, **kwargs) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """The image encoder, feature selection and projector over (num_frames, 3, H, W) in micro-batches of
        `config.vision_frames_per_batch` frames, so the encoder's activations exist for one micro-batch at a
        time. Returns the encoder's outputs over all frames (``last_hidden_state``; ``hidden_states`` and
        ``attentions`` only when asked in ``kwargs``) and the projected tokens (num_frames, N, dim). Each
        micro-batch's results are written into tensors for all frames as they come (no list of pieces
        concatenated at the end, which would hold everything twice)."""
        # Not asked for in the call: the configs decide, as in transformers' models (the composite config's
        # output_hidden_states / output_attentions, or the vision config's).
        for name in ("output_hidden_states", "output_attentions"):
            if kwargs.get(name) is None:
                kwargs[name] = bool(getattr(self.config, name, False) or getattr(self.config.vision_config, name, False))
        keep_hidden, keep_attentions = bool(kwargs["output_hidden_states"]), bool(kwargs["output_attentions"])
        total = frames.shape[0]
        step = max(1, self.config.vision_frames_per_batch or total)
        if step >= total:
            vision = self.run_vision_tower(frames, **kwargs)
            tokens = self.projector(self.select_patch_features(vision))  # (num_frames, N, dim)
            if not keep_hidden:
                vision.hidden_states = None
            return vision, tokens
        last_hidden = tokens = hidden_states = attentions = None
        for start in range(0, total, step):
            vision = self.run_vision_tower(frames[start:start + step], **kwargs)
            tokens = _filled(tokens, self.projector(self.select_patch_features(vision)), start, total)
            last_hidden = _filled(last_hidden, vision.last_hidden_state, start, total)
            if keep_hidden:
                hidden_states = [_filled(None if hidden_states is None else hidden_states[i], h, start, total)
                                 for i, h in enumerate(vision.hidden_states)]
            if keep_attentions:
                attentions = [_filled(None if attentions is None else attentions[i], a, start, total)
                              for i, a in enumerate(vision.attentions)]
        merged = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden,  # (num_frames, patches, vision_dim)
            hidden_states=tuple(hidden_states) if keep_hidden else None,
            attentions=tuple(attentions) if keep_attentions else None,
        )
        return merged, tokens  # tokens: (num_frames, N, dim)

    def encode_in_time(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """The temporal encoder on each clip's tokens: a list of (T_i, N, dim) -> a list of (T_i, N, dim).

        Clips of equal length share one call; a bidirectional scan must see exactly one clip's frames, so
        clips are never padded to a common length."""
        encoded: list[torch.Tensor | None] = [None] * len(clips)
        for length in sorted({clip.shape[0] for clip in clips}):
            members = [i for i, clip in enumerate(clips) if clip.shape[0] == length]
            group = torch.stack([clips[i] for i in members])  # (clips, T, N, dim)
            n, frames, tokens, dim = group.shape
            out = self.temporal_encoder(group.reshape(n, frames * tokens, dim), tokens).view(n, frames, tokens, dim)
            for j, i in enumerate(members):
                encoded[i] = out[j]
        return encoded

    def reduce_tokens(self, encoded: torch.Tensor) -> torch.Tensor:
        """Token reduction after the temporal encoder: (batch, frames, tokens, dim) -> (batch, frames', tokens', dim)."""
        c = self.config
        return reduce_visual_tokens(encoded, c.grid_size, c.temporal_pool_k, c.spatial_pool_p, c.temporal_sample_s)

    def _visual_features(self, clips_frames: torch.Tensor, counts: list[int], **kwargs) -> BaseModelOutputWithPooling:
        """The whole visual path for frames of several clips laid end to end, (sum T_i, 3, H, W)."""
        vision, tokens = self._encode_frames_in_batches(clips_frames, **kwargs)  # tokens: (sum T_i, N, dim)
        encoded = self.encode_in_time(list(tokens.split(counts)))  # per clip (T_i, N, dim)
        # per clip (T'_i * N', dim): what that clip's placeholders receive
        vision.pooler_output = [self.reduce_tokens(clip[None])[0].flatten(0, 1) for clip in encoded]
        return vision

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_num_frames: torch.Tensor | list[int] | None = None,
        video_num_tokens: torch.Tensor | list[int] | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """
        Args:
            pixel_values_videos: (num_videos, max_frames, 3, H, W); videos shorter than ``max_frames``
                are padded at the end.
            video_num_frames: (num_videos,) real frame count of each video; None means all ``max_frames``.
            video_num_tokens: (num_videos,) the placeholder count the processor gave each video, when the
                caller places features itself (vLLM); a ValueError when the features have another length, as
                when the processor counted for another token reduction (k / p / s) than this config's.
            **kwargs: ``output_hidden_states``, ``output_attentions`` (passed to the image encoder) and
                ``return_dict`` (False: a tuple).
        Returns:
            The image encoder's `BaseModelOutputWithPooling` over all real frames (``last_hidden_state``,
            and ``hidden_states`` / ``attentions`` when asked), whose ``pooler_output`` is a list with one
            (``config.num_visual_tokens(frames_i)``, dim) tensor per video, ready to scatter.
        """
        if pixel_values_videos.dim() != 5:
            raise ValueError(
                "pixel_values_videos must have shape (num_videos, frames, channels, height, width), "
                f"got {tuple(pixel_values_videos.shape)}."
            )
        num_videos, max_frames = pixel_values_videos.shape[:2]
        counts = _frame_counts(video_num_frames, num_videos, max_frames)
        if all(n == max_frames for n in counts):  # no padding: the frames as they are, no copy
            frames = pixel_values_videos.flatten(0, 1)  # (num_videos * max_frames, 3, H, W)
        else:
            frames = torch.cat([pixel_values_videos[i, :n] for i, n in enumerate(counts)])  # (sum T_i, 3, H, W)
        return self._check_token_counts(self._visual_features(frames, counts, **kwargs), video_num_tokens, "video")

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, image_num_tokens: torch.Tensor | list[int] | None = None,
                           **kwargs) -> BaseModelOutputWithPooling:
        """
        Args:
            pixel_values: (num_images, 3, H, W). Each image is a one-frame clip (T = 1).
            image_num_tokens: (num_images,) placeholder counts, checked as ``video_num_tokens`` is.
            **kwargs: as `get_video_features`.
        Returns:
            As `get_video_features`; ``pooler_output`` is a list of (num_visual_tokens(1), dim) per image.
        """
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape (num_images, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        features = self._visual_features(pixel_values, [1] * pixel_values.shape[0], **kwargs)
        return self._check_token_counts(features, image_num_tokens, "image")

    def _check_token_counts(self, features: BaseModelOutputWithPooling, expected, kind: str):
        """``features`` when each item's token count equals the placeholder count the processor gave it."""
        if expected is None:
            return features
        expected = [int(n) for n in (expected.flatten().tolist() if torch.is_tensor(expected) else expected)]
        produced = [item.shape[0] for item in features.pooler_output]
        if expected != produced:
            c = self.config
            raise ValueError(
                f"The processor gave the {kind}s {expected} placeholder tokens but the model produces {produced}: "
                f"the processor counted for another token reduction than the model's (temporal_pool_k="
                f"{c.temporal_pool_k}, spatial_pool_p={c.spatial_pool_p}, temporal_sample_s={c.temporal_sample_s}). "
                "Set both with storm_hf.inference.set_token_reduction(model, processor, ...) and save them together."
            )
        return features

    # -- long videos: chunk by chunk ------------------------------------------------------------------

    def streams_in_time(self) -> bool:
        """Whether the temporal encoder can run frame chunk by frame chunk with a carried state (forward-only,
        raster order, or no temporal layers): long videos then keep only reduced tokens, and live use works."""
        encoder = self.temporal_encoder
        return not encoder.layers or (not encoder.bidirectional and "time_major" not in encoder.scan_orders)

    def token_reducer(self) -> StreamingTokenReducer:
        """A `StreamingTokenReducer` with this model's grid and k / p / s."""
        c = self.config
        return StreamingTokenReducer(c.grid_size, c.temporal_pool_k, c.spatial_pool_p, c.temporal_sample_s)

    def stream_frames(self, pixels: torch.Tensor, state: list[MambaMixerState] | None,
                      reducer: StreamingTokenReducer) -> tuple[torch.Tensor, list[MambaMixerState] | None]:
        """The next frames of a stream (`streams_in_time` models) through the whole visual path: (frames, 3, H, W)
        pixels and the temporal state the previous frames left (None at the start) -> the reduced tokens
        (tokens, dim) of the windows they complete in ``reducer`` and the state after them."""
        tokens = self._encode_frames_in_batches(pixels.to(self.device))[1]  # (frames, N, dim)
        if self.temporal_encoder.layers:
            frames, n, dim = tokens.shape
            if state is None:
                state = self.temporal_encoder.init_state(1, tokens.device)
            out, state = self.temporal_encoder.stream(tokens.reshape(1, frames * n, dim), state)
            tokens = out.view(frames, n, dim)
        return reducer.push(tokens), state

    @torch.no_grad()
    def encode_video(self, frame_chunks, num_frames: int | None = None, progress=None) -> StormVideoFeatures:
        """The visual features of one video given as chunks of frames, for videos whose pixels would not fit in
        memory at once: only one chunk's pixels and image-encoder activations exist at a time.

        A forward-only raster model (`streams_in_time`) runs each chunk through the temporal encoder with the
        state the previous chunk left and reduces it as its k-windows complete, so only reduced tokens are kept;
        a bidirectional one keeps the projector's tokens of every frame (one (frames, N, dim) buffer when
        ``num_frames`` is given), then runs the temporal encoder (chunked over its sequence, see
        `temporal_inference_chunk_tokens`) and the reduction once all frames are in. The features equal
        `get_video_features` on the same frames (within float rounding). No gradients.

        Args:
            frame_chunks: an iterable of (frames, 3, H, W) pixel tensors in time order, normalised as the
                processor does it (`StormProcessor.video_chunks` reads a file or an array so).
            num_frames: the frames in all, when known (``len(frame_chunks)`` is used when it has one).
            progress: None / True: a progress bar (transformers' tqdm: `disable_progress_bar()` turns it off);
                False: none; a callable: called with (frames done, frames in all or None) after each chunk.
        Returns:
            `StormVideoFeatures`: ``pooler_output`` a list with the video's (num_visual_tokens(frames), dim)
            tokens (``generate(..., mm_encoder_outputs={"video": features})`` takes it, with a prompt expanded by
            ``processor(text=..., video_num_frames=features.video_num_frames)``) and ``video_num_frames``.
        """
        c = self.config
        if num_frames is None:
            num_frames = getattr(frame_chunks, "num_frames", None)
        report = _progress_reporter(progress, num_frames, "Encoding video frames")
        streams = self.streams_in_time()
        reducer = self.token_reducer()
        pieces, stored, state, done, written = [], None, None, 0, 0
        try:
            for chunk in frame_chunks:
                if not torch.is_tensor(chunk) or chunk.dim() != 4:
                    raise ValueError("encode_video: each chunk must be a (frames, channels, height, width) pixel "
                                     f"tensor, got {tuple(chunk.shape) if torch.is_tensor(chunk) else type(chunk).__name__}.")
                if chunk.shape[0] == 0:
                    continue
                count = chunk.shape[0]
                if num_frames is not None and done + count > num_frames:
                    raise ValueError(f"encode_video: num_frames={num_frames}, but more frames came.")
                if streams:  # the reduced tokens (tokens, dim) of the windows these frames complete
                    piece, state = self.stream_frames(chunk, state, reducer)
                else:  # every frame's projector tokens (frames, N, dim)
                    piece = self._encode_frames_in_batches(chunk.to(self.device))[1]
                if num_frames is None:
                    pieces.append(piece)
                else:  # one buffer for the whole video, filled as the chunks come
                    if stored is None:
                        rows = c.num_visual_tokens(num_frames) if streams else num_frames
                        stored = piece.new_empty(rows, *piece.shape[1:])
                    written = _write_tokens(stored, written, piece)
                done += count
                report(done)
        finally:
            report(None)
        if done == 0:
            raise ValueError("encode_video: the video gave no frames.")
        if num_frames is not None and done != num_frames:
            raise ValueError(f"encode_video: num_frames={num_frames}, but {done} frames came.")
        if streams:
            last = reducer.finish()
            if stored is not None:
                _write_tokens(stored, written, last)
                features = stored
            else:
                features = torch.cat(pieces + ([last] if last is not None else []))
        else:
            tokens = stored if stored is not None else torch.cat(pieces)
            del pieces, stored
            frames, n, dim = tokens.shape
            # one clip, encoded over its own buffer: no stacked copy (encode_in_time), no second sequence
            encoded = self.temporal_encoder(tokens.view(1, frames * n, dim), n, overwrite_input=True)
            encoded = encoded.view(1, frames, n, dim)
            del tokens
            features = self.reduce_tokens(encoded)[0].flatten(0, 1)
        return StormVideoFeatures(pooler_output=[features], video_num_frames=torch.tensor([done]))

    def get_placeholder_mask(self, input_ids, inputs_embeds, token_id: int, features: torch.Tensor, kind: str):
        """Boolean (batch, seq, 1) mask of the ``token_id`` placeholders; raises a ValueError naming both
        counts when they differ from the number of feature vectors (a check `torch.compile` can trace)."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == token_id
        n_tokens = mask.sum()
        torch_compilable_check(
            n_tokens == features.shape[0],
            lambda: (
                f"{kind.capitalize()} features and {kind} placeholder tokens do not match: the input has "
                f"{int(n_tokens)} {kind} tokens (id {token_id}) but the {kind}s produce {features.shape[0]} features. "
                f"Expand each {kind} placeholder to config.num_visual_tokens(num_frames) tokens (the processor does this)."
            ),
        )
        return mask.unsqueeze(-1)

    @staticmethod
    def _check_no_placeholders(input_ids: torch.Tensor, token_id: int, kind: str, cached):
        """A prompt holding ``kind`` placeholders without that kind's pixels would run as text: refuse it. Only
        a prompt (nothing ``cached`` yet): a decoding step may emit the placeholder id like any other token."""
        if isinstance(cached, int) and cached > 0:
            return
        n_tokens = (input_ids == token_id).sum()
        pixels = "pixel_values_videos" if kind == "video" else "pixel_values"
        # branch-free on a tensor `cached` (static cache), so that torch.compile traces one graph
        ok = n_tokens == 0 if isinstance(cached, int) else (n_tokens == 0) | (cached > 0)
        torch_compilable_check(
            ok,
            lambda: (
                f"The input has {int(n_tokens)} {kind} placeholder tokens (id {token_id}) but no {pixels} (nor "
                f"precomputed {kind} features): the model would answer without seeing the {kind}. Pass the {kind}s "
                f"through the processor (`processor(text=..., videos=...)`, or a training collator that calls it), or "
                f"remove the placeholders for a text-only input."
            ),
        )

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
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
            cache: the LLM's KV cache (`past_key_values`, its old name, is accepted until transformers 5.40).
            mm_encoder_outputs: pre-computed ``{"image": ..., "video": ...}`` from `get_image_features` /
                `get_video_features` (what `generate()` passes, so frames are encoded once per call).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("StormModel.forward: pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (batch, seq, dim)

        encoded = dict(mm_encoder_outputs or {})
        if encoded.get("image") is None and pixel_values is not None:
            encoded["image"] = self.get_image_features(pixel_values)
        if encoded.get("video") is None and pixel_values_videos is not None:
            encoded["video"] = self.get_video_features(pixel_values_videos, video_num_frames)

        cached = 0 if cache is None else cache.get_seq_length()  # an int, or a tensor for a static cache
        for kind, token_id in (("image", self.config.image_token_id), ("video", self.config.video_token_id)):
            if encoded.get(kind) is None:
                if input_ids is not None and not self._placeholders_as_text:
                    self._check_no_placeholders(input_ids, token_id, kind, cached)
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
    """Validated per-video frame counts (a list of ints).

    Under `torch.export` a tensor of counts holds no values to read (they are data, the frame counts decide
    shapes): the exported program takes the common case, every video ``max_frames`` long (the static shape of
    ``pixel_values_videos``, as the processor gives a batch of equal-length videos), and checks it when it runs
    (a runtime assertion fails on a padded batch). `torch.compile` reads the values (a graph break) instead."""
    if video_num_frames is None:
        return [max_frames] * num_videos
    if torch.is_tensor(video_num_frames) and torch.compiler.is_exporting():
        if tuple(video_num_frames.shape) != (num_videos,):
            raise ValueError(f"video_num_frames must have shape ({num_videos},) (one count per video), got "
                             f"{tuple(video_num_frames.shape)}.")
        torch_compilable_check(
            (video_num_frames == max_frames).all(),
            f"An exported STORM takes videos of {max_frames} frames only (the shape it was exported with); "
            "video_num_frames holds another count.",
        )
        return [max_frames] * num_videos
    counts = [int(n) for n in (video_num_frames.tolist() if torch.is_tensor(video_num_frames) else video_num_frames)]
    if len(counts) != num_videos or any(n < 1 or n > max_frames for n in counts):
        raise ValueError(
            f"video_num_frames must give, for each of the {num_videos} videos, a frame count in 1..{max_frames}; got {counts}."
        )
    return counts


class StormForConditionalGeneration(StormFromPartsMixin, StormPreTrainedModel, GenerationMixin):
    """STORM with the LM head: `forward` returns logits (and the loss when ``labels`` are given); use
    `generate()` for answers. Frames go through the image encoder and temporal encoder once per
    `generate()` call; decoding then uses the KV cache."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # the LLM's own plan shards embed_tokens; the head follows

    def __init__(self, config: StormConfig):
        super().__init__(config)
        self.model = StormModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

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

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`, with two STORM-specific guards.

        * A right-padded batch gets a `UserWarning` naming its rows: new tokens are appended after the last
          position, so a row that ends in padding is continued after its padding and answers wrongly. The
          processor pads on the left by default. (A warning, as in transformers, not an error: generation tests
          and tools pass masks with trailing zeros on purpose.)
        * A STORM ``assistant_model`` (assisted decoding) drafts from the prompt's text: transformers hands the
          assistant no pixels, so for this call it runs its placeholders as text instead of refusing them, as
          other VLM assistants do; this model verifies every drafted token with the video.
        """
        mask = kwargs.get("attention_mask")
        if torch.is_tensor(mask) and mask.dim() == 2 and mask.shape[1] > 0 and not torch.compiler.is_compiling():
            ends_padded = (mask[:, -1] == 0).nonzero().flatten().tolist()
            if ends_padded:
                warnings.warn(
                    f"generate: row(s) {ends_padded} of the batch end in padding (attention_mask[:, -1] == 0): the "
                    "prompts are padded on the right, and generation continues after the padding, which gives wrong "
                    "answers. Pad on the left: processor(..., padding_side='left') (the processor's default), or "
                    "processor.tokenizer.padding_side = 'left'.",
                    UserWarning, stacklevel=2,
                )
        assistant = kwargs.get("assistant_model")
        drafting = getattr(getattr(assistant, "model", None), "_placeholders_as_text", None)
        if drafting is None:
            return super().generate(*args, **kwargs)
        assistant.model._placeholders_as_text = True
        try:
            return super().generate(*args, **kwargs)
        finally:
            assistant.model._placeholders_as_text = drafting

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

    def encode_video(self, frame_chunks, num_frames: int | None = None, progress=None) -> StormVideoFeatures:
        """`StormModel.encode_video`: a long video's features, chunk by chunk."""
        return self.model.encode_video(frame_chunks, num_frames=num_frames, progress=progress)

    def live_session(self, processor, prefill: str = "push") -> "StormLiveSession":
        """A `StormLiveSession` over this model (forward-only raster models): push frames, ask at any time.
        ``prefill``: when completed windows enter the LLM's cache, "push" or "ask" (see the class)."""
        return StormLiveSession(self, processor, prefill=prefill)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
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


class StormLiveSession:
    """Live video with a forward-only STORM: `push` frames at any rate as they arrive, `ask` a question at any
    moment about everything seen so far.

    The session carries the temporal encoder's state through every layer and a `StreamingTokenReducer`, so the
    visual path costs the same per frame however long the stream is. Each completed k-window's reduced tokens go
    into the LLM's KV cache of the prompt (the chat template up to the video, then the video's tokens): with
    ``prefill="push"`` (the default) as the window completes, so that a question only adds itself; with
    ``prefill="ask"`` at the next question, so that a push costs only the visual path (with a transformer LLM,
    appending tokens costs attention over everything cached, which grows with the stream). Asking never re-reads
    the video: the frames of a window not yet complete and the question go on top of the cache, `generate`
    answers, and the cache is cut back to the video, so questions and answers do not stay in it. An answer
    equals the one-shot path's (`processor(text=..., videos=...)` and `generate`) on the same frames, up to float
    rounding. Make one with `StormForConditionalGeneration.live_session(processor)`.
    """

    def __init__(self, model: "StormForConditionalGeneration", processor, prefill: str = "push"):
        if prefill not in ("push", "ask"):
            raise ValueError(f"StormLiveSession: prefill must be 'push' or 'ask', got {prefill!r}.")
        self.prefill = prefill
        self._waiting = []  # reduced tokens not in the cache yet (prefill="ask")
        if not model.model.streams_in_time():
            raise ValueError(
                "Live sessions need a model whose temporal encoder reads forward only in raster order "
                "(temporal_bidirectional=False, temporal_scan_order='raster'): this one reads every frame before "
                "it can encode any, so use the whole video (processor + generate, or model.encode_video)."
            )
        self.model, self.processor = model, processor
        self.video_token_id = model.config.video_token_id
        c = model.config
        self.reducer = model.model.token_reducer()
        self.state = None  # per temporal layer, after the frames pushed so far
        marker = "\u0000QUESTION\u0000"
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": marker}]}]
        prompt = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        self._prompt_template, self._marker = prompt, marker  # the question goes at the marker
        self.input_ids = self._split_prompt("?")[0]  # ids of every cached position: the prompt's start, then video
        self._prefix_length = len(self.input_ids)
        self.cache = DynamicCache(config=c.text_config)
        with torch.no_grad():
            ids = torch.tensor([self.input_ids], device=model.device)
            self._extend(model.get_input_embeddings()(ids)[0])

    @property
    def frames_seen(self) -> int:
        return self.reducer.frames

    def _split_prompt(self, question: str) -> tuple[list[int], list[int]]:
        """The prompt's ids for ``question`` as the processor tokenizes it (special tokens included), split at
        its one video placeholder: (ids before it, ids after it)."""
        text = self._prompt_template.replace(self._marker, question)
        ids = self.processor.tokenizer(text)["input_ids"]
        at = ids.index(self.video_token_id)
        return ids[:at], ids[at + 1:]

    def _extend(self, embeddings: torch.Tensor):
        """Run the LLM over (tokens, dim) after the cached positions, keeping them in the cache."""
        self.model.model.language_model(inputs_embeds=embeddings[None].to(self.model.dtype), cache=self.cache,
                                        use_cache=True)

    @torch.no_grad()
    def push(self, frames) -> int:
        """Add the next frames (anything the video processor takes as one video: (frames, H, W, 3) uint8, a
        list of images, ...; or a (frames, 3, H, W) pixel tensor already processed). Returns the visual tokens
        this added to the cache (0 until a k-window completes)."""
        if torch.is_tensor(frames) and frames.dim() == 4 and frames.is_floating_point():
            pixels = frames
        else:
            pixels = self.processor.video_processor([frames], do_sample_frames=False,
                                                    return_tensors="pt")["pixel_values_videos"][0]
        # (tokens, dim) of the windows these frames complete
        new, self.state = self.model.model.stream_frames(pixels, self.state, self.reducer)
        if new.shape[0]:
            if self.prefill == "push":
                self._extend(new)
            else:
                self._waiting.append(new)
            self.input_ids.extend([self.video_token_id] * new.shape[0])
        return int(new.shape[0])

    @torch.no_grad()
    def ask(self, question: str, max_new_tokens: int = 8, **generate_kwargs) -> str:
        """Answer ``question`` about the frames pushed so far (greedy unless ``generate_kwargs`` say otherwise)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"StormLiveSession.ask: the question is empty ({question!r}).")
        if self.reducer.frames == 0:
            raise ValueError("StormLiveSession.ask: no frames yet; push some first.")
        if self._waiting:  # prefill="ask": the windows completed since the last question
            self._extend(torch.cat(self._waiting))
            self._waiting = []
        cached = self.cache.get_seq_length()
        partial = self.reducer.peek()  # the window not yet complete: its mean so far, as the one-shot path
        before, question_ids = self._split_prompt(question)
        if before != self.input_ids[:self._prefix_length]:
            raise ValueError("StormLiveSession.ask: the question changed how the prompt before the video tokenizes.")
        partial_count = 0 if partial is None else partial.shape[0]
        ids = torch.tensor([self.input_ids + [self.video_token_id] * partial_count + question_ids],
                           device=self.model.device)
        settings = {"max_new_tokens": max_new_tokens, "do_sample": False, **generate_kwargs}
        if partial_count:
            settings["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(pooler_output=[partial])}
        try:
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), cache=self.cache,
                                      **settings)
        finally:  # back to the video only: the next push extends it, the next question starts there
            added = self.cache.get_seq_length() - cached
            if added:
                self.cache.crop(-added)
        return self.processor.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


__all__ = [
    "StormPreTrainedModel",
    "StormModel",
    "StormForConditionalGeneration",
    "StormLiveSession",
    "StormVideoFeatures",
    "StreamingTokenReducer",
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
