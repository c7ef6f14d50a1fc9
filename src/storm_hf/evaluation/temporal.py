# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Does a STORM's temporal encoder carry time into its tokens? Two measurements for any checkpoint:

* `cross_frame_reach`: how strongly each temporal layer's directions make an output frame depend on the input
  frames around it, as the norm of the Jacobian by frame distance (the residual path excluded: only what the
  mixer adds). A reach that falls to ~0 one frame away means pooling k frames afterwards cannot keep their order.
* `window_order_signal`: what reversing the frames inside each aligned window of ``temporal_pool_k`` frames
  changes after token reduction: the relative change of the pooled tokens (0, up to float rounding, for a model
  without a temporal encoder, whose pooled window is the average of the same frames), and, on question records with two
  options, the accuracy with the frames as they are and reversed inside each window.

    from storm_hf.evaluation.temporal import cross_frame_reach, window_order_signal
"""

from __future__ import annotations

import torch

from ..inference import expanded_prompt_ids, video_question_prompt
from ..modeling_storm import change_scan_order
from .scoring import _option_ids, _sequence_loglikelihoods


def window_reversed_order(num_frames: int, k: int) -> list[int]:
    """Frame indices 0..num_frames-1 with each aligned window of ``k`` reversed (a last partial window too):
    the order that leaves a k-frame average pool's input set per window, and so the pooled tokens of a model
    without temporal encoder, unchanged. ``window_reversed_order(6, 4) == [3, 2, 1, 0, 5, 4]``."""
    if k < 1:
        raise ValueError(f"window_reversed_order: k must be at least 1, got {k}.")
    order = []
    for start in range(0, num_frames, k):
        order.extend(reversed(range(start, min(start + k, num_frames))))
    return order


def _window_reversed(frames: torch.Tensor, k: int) -> torch.Tensor:
    """(frames, ...) with the frames of each aligned window of ``k`` reversed (a last partial window too)."""
    return frames[window_reversed_order(frames.shape[0], k)]


def cross_frame_reach(model, pixel_values: torch.Tensor, max_distance: int = 4, probes: int = 4,
                      seed: int = 0) -> dict[tuple[int, str], list[float]]:
    """{(layer, "forward" | "backward"): [reach at frame distance -max_distance .. +max_distance]} for one clip.

    ``pixel_values``: (frames, 3, H, W) as the processor gives one video. The reach at distance d is the norm of
    d(mixer output at frame u) / d(layer input at frame u + d), estimated with ``probes`` random unit directions
    of the output (Hutchinson-style) and averaged over every u whose neighbours up to ``max_distance`` exist;
    the layer input is what the previous layers made of the clip. Negative d: earlier input frames."""
    inner = model.model if hasattr(model, "model") else model
    encoder = inner.temporal_encoder
    frames = pixel_values.shape[0]
    if frames < 2 * max_distance + 1:
        raise ValueError(f"cross_frame_reach: a clip of {frames} frames has no frame with {max_distance} frames on "
                         f"each side; give at least {2 * max_distance + 1} frames or a smaller max_distance.")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tokens = inner.projector(inner.vision_patch_features(pixel_values.to(inner.device, inner.dtype)))
    per_frame = tokens.shape[1]
    hidden = tokens.reshape(1, frames * per_frame, -1)  # raster order: the layer input of layer 0
    reach = {}
    centres = range(max_distance, frames - max_distance)
    for index, (layer, order) in enumerate(zip(encoder.layers, encoder.scan_orders)):
        directions = [("forward", layer.forward_mixer, False)]
        if layer.backward_mixer is not None:
            directions.append(("backward", layer.backward_mixer, True))
        for name, mixer, reverse in directions:
            if getattr(mixer, "in_proj", None) is None:  # shared projections: the layer's own in_proj feeds it
                continue
            x = hidden.detach().clone().requires_grad_(True)  # (1, frames * tokens, dim), raster
            sequence = x if order == "raster" else change_scan_order(x, per_frame, "time_major")
            normed = layer.norm(sequence)
            out = mixer(normed.flip(1) if reverse else normed)
            out = out.flip(1) if reverse else out
            if order != "raster":
                out = change_scan_order(out, per_frame, "raster")
            out = out.view(frames, per_frame, -1)
            totals = torch.zeros(2 * max_distance + 1)
            for u in centres:
                for _ in range(probes):
                    direction = torch.randn(out[u].shape, generator=generator).to(out)
                    (grad,) = torch.autograd.grad(out[u], x, direction / direction.norm(), retain_graph=True)
                    norms = grad.view(frames, -1).norm(dim=1)
                    totals += norms[u - max_distance : u + max_distance + 1].detach().float().cpu()
            reach[(index, name)] = (totals / (len(centres) * probes)).tolist()
        with torch.no_grad():
            sequence = hidden if order == "raster" else change_scan_order(hidden, per_frame, "time_major")
            hidden = layer(sequence)
            if order != "raster":
                hidden = change_scan_order(hidden, per_frame, "raster")
    return reach


@torch.no_grad()
def window_order_signal(model, processor, clips, options_and_answers=None) -> dict:
    """What reversing the frames inside each window of ``temporal_pool_k`` frames changes.

    ``clips``: a list of (frames, 3, H, W) pixel tensors (the processor's ``pixel_values_videos[i]``).
    ``options_and_answers``: optional, per clip ``(question, options, answer)``; with it the accuracy of the
    option with the highest log-likelihood (after the question in the processor's chat template) is measured
    on the frames as they are and reversed in each window.
    Returns ``{"pooled_change": mean relative change of the pooled tokens, "accuracy": ...,
    "accuracy_window_reversed": ..., "reversal_drop": accuracy - accuracy_window_reversed}`` (the last three
    only with ``options_and_answers``)."""
    inner = model.model if hasattr(model, "model") else model
    k = model.config.temporal_pool_k
    changes, right = [], [0, 0]  # correct answers: frames as given, frames reversed in each window
    for number, frames in enumerate(clips):
        frames = frames.to(inner.device, inner.dtype)
        reversed_frames = _window_reversed(frames, k)
        pooled = [inner.get_video_features(f[None]).pooler_output[0] for f in (frames, reversed_frames)]
        changes.append(float((pooled[0] - pooled[1]).norm() / pooled[0].norm().clamp_min(1e-12)))
        if options_and_answers is not None:
            question, options, answer = options_and_answers[number]
            prompt = expanded_prompt_ids(processor, video_question_prompt(processor, question), frames.shape[0])
            ids = _option_ids(processor, options)
            for slot, features in enumerate(pooled):
                scores = _sequence_loglikelihoods(model, processor, prompt, features, list(options), ids)
                right[slot] += max(scores, key=scores.get) == answer
    result = {"pooled_change": sum(changes) / max(1, len(changes)), "clips": len(changes)}
    if options_and_answers is not None:
        result["accuracy"] = right[0] / len(changes)
        result["accuracy_window_reversed"] = right[1] / len(changes)
        result["reversal_drop"] = result["accuracy"] - result["accuracy_window_reversed"]
    return result


__all__ = ["cross_frame_reach", "window_order_signal", "window_reversed_order"]
