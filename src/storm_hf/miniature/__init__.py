# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The miniature STORM of the temporal video-QA benchmark (`storm_hf.miniature.temporal_qa`), and the trained one that
ships with the package.

`BUNDLED_MODEL` is the folder of a small STORM (bidirectional Mamba temporal encoder, temporal pooling k = 4)
trained on the benchmark's training split: a real checkpoint (safetensors, config, tokenizer, processor)
that loads offline through the ordinary loading code::

    from storm_hf import StormForConditionalGeneration, StormProcessor
    from storm_hf.miniature import BUNDLED_MODEL

    model = StormForConditionalGeneration.from_pretrained(BUNDLED_MODEL)
    processor = StormProcessor.from_pretrained(BUNDLED_MODEL)

It answers the benchmark's questions (closed answer sets, the benchmark's words only); `storm-hf demo` runs it.
How it was trained, and the table of arms it belongs to, are in benchmarks/RESULTS.md
(`python benchmarks/temporal_qa.py`).

`mini_config` and `build_initial_checkpoint` give the untrained models of that table: one layout, three arms
(no temporal encoder, bidirectional, forward-only) and any token reduction.
"""

from __future__ import annotations

import os

import torch

from ..configuration_storm import StormConfig

BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled", "storm-mini-temporal-qa")
# The web page's example clips (generated held-out clips of the benchmark, with their questions in clips.json).
DEMO_CLIPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled", "demo-clips")

# The arms of the benchmark table: the VILA-style baseline (no temporal encoder: projector tokens go straight
# to the reduction), STORM (bidirectional, the paper's main model) and STORM's forward-only variant.
ARMS = {
    "baseline": {"temporal_num_layers": 0},
    "storm": {"temporal_bidirectional": True},
    "storm-forward": {"temporal_bidirectional": False},
}

# SigLIP initialises its position embeddings with std 1 / sqrt(width) and transformers' LLMs their weights
# with std 0.02: right for pretrained widths in the hundreds or thousands, but at width 64 trained from scratch
# the LayerNorm'd content of a patch drowns where the patch is, and attention starts so flat that the LLM
# takes thousands of steps to find a token. Measured on this benchmark's frames (one object, "left or
# right?", batch 32): not learned in 600 steps at the library defaults, learned in ~150 with these.
POSITION_EMBEDDING_STD = 1.0
INITIALIZER_RANGE = 0.1


def mini_config(arm: str = "storm", temporal_pool_k: int = 4, spatial_pool_p: int = 1, **overrides) -> StormConfig:
    """The miniature layout: 48 px frames in 6 px patches (8 x 8, pixel-shuffled to 4 x 4 = 16 tokens per
    frame), a 2-layer SigLIP-style encoder and a 2-layer Qwen2-style LLM of width 64, a 1-layer temporal
    encoder (d_state 8, no final norm), the tiny layout's 512-token vocabulary (`storm_hf.miniature.tiny`)."""
    if arm not in ARMS:
        raise ValueError(f"Unknown arm {arm!r}; choose one of {', '.join(ARMS)}.")
    fields = {
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 48, "patch_size": 6, "vision_use_head": False,
        },
        "text_config": {
            "model_type": "qwen2", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
            # 2 query heads of 32 (one key/value head): vLLM's CPU attention serves head sizes of 32 and up.
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 2048, "tie_word_embeddings": False, "initializer_range": INITIALIZER_RANGE,
            "eos_token_id": 509, "pad_token_id": 0,
        },
        "image_token_id": 510, "video_token_id": 511,
        # No final norm after the temporal encoder: with its output projections at zero (build_initial_checkpoint)
        # a new encoder is then exactly the identity on pretrained features, so every arm starts as the same
        # model; a LayerNorm there would rescale every token the pretrained LLM was trained on.
        "temporal_num_layers": 1, "temporal_d_state": 8, "temporal_final_norm": False,
        "temporal_pool_k": temporal_pool_k, "spatial_pool_p": spatial_pool_p,
        # 48 px frames: all of a batch's frames in one call of the image encoder (micro-batches only add calls).
        "vision_frames_per_batch": None,
    }
    fields.update(ARMS[arm])
    fields.update(overrides)
    return StormConfig(**fields)


def mini_tokenizer():
    """The word-level tokenizer of the benchmark's questions and answers, in the tiny layout."""
    from .temporal_qa import vocabulary
    from .tiny import word_tokenizer

    return word_tokenizer(vocabulary())


def new_model(config: StormConfig, seed: int = 0):
    """A freshly initialised model of ``config`` (seeded), with the position embeddings of its image encoder
    at `POSITION_EMBEDDING_STD` (see the comment there)."""
    from ..modeling_storm import StormForConditionalGeneration

    torch.manual_seed(seed)
    model = StormForConditionalGeneration(config)
    embeddings = getattr(model.model.vision_tower, "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "position_embedding"):
        with torch.no_grad():
            torch.nn.init.normal_(embeddings.position_embedding.weight, std=POSITION_EMBEDDING_STD)
    return model


def bundled_forward_only(output_dir):
    """A forward-only STORM for live video made from the bundled model: its image encoder, projector and LLM,
    and a new forward-only raster temporal layer whose output projection starts at zero, so the temporal
    encoder is the identity (`build_initial_checkpoint` with ``weights_from=BUNDLED_MODEL``). It answers what it
    was trained to see in the frames (which way the square moves, its shape), not the order inside a pooling
    window, which its bidirectional encoder learned. Written to ``output_dir``; returns ``output_dir``."""
    config = StormConfig.from_pretrained(BUNDLED_MODEL)
    config.temporal_bidirectional, config.temporal_scan_order, config.temporal_num_layers = False, "raster", 1
    return build_initial_checkpoint(output_dir, config, weights_from=BUNDLED_MODEL)


def build_initial_checkpoint(output_dir, config: StormConfig, seed: int = 0, num_frames: int = 16,
                             weights_from=None, zero_new_residuals: bool = True):
    """Write a model of ``config`` and its processor (the benchmark's tokenizer, 48 px frames, ``num_frames`` per
    video) to ``output_dir``, ready for `storm-hf train`. Returns ``output_dir``.

    The model is freshly initialised (seeded); with ``weights_from`` (a checkpoint folder of the same layout,
    e.g. one without temporal encoder) every weight but the temporal encoder's comes from there, so a
    pretrained image encoder, projector and LLM get a new temporal encoder. A checkpoint that differs in
    anything else raises a ValueError naming what does not fit. With ``zero_new_residuals`` (the default) the
    new temporal encoder's output projections start at zero, so the model starts as exactly the pretrained one
    (each layer is ``x + mixer(norm(x))``) and the temporal encoder's contribution grows from there, as a
    LoRA adapter's does; the rest of the encoder keeps mamba_ssm's initialisation. The paper trains its
    randomly initialised encoder from the start of its alignment stage instead; here a baseline and a STORM
    arm fine-tuned from the same image model then begin from the same function."""
    from ..processing_storm import StormProcessor
    from ..video_processing_storm import StormVideoProcessor

    model = new_model(config, seed)
    if weights_from is not None:
        _load_all_but_temporal_encoder(model, weights_from)
        if zero_new_residuals:
            zero_residual_outputs(model.model.temporal_encoder)
    tokenizer = mini_tokenizer()
    model.set_generation_tokens(tokenizer)
    side = config.vision_config.image_size
    processor = StormProcessor.from_config(
        config, tokenizer=tokenizer,
        video_processor=StormVideoProcessor(size={"height": side, "width": side}, num_frames=num_frames),
    )
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def zero_residual_outputs(temporal_encoder) -> None:
    """Zero the last projection of each layer's residual branch (the merge Linear of a ``concat`` layer, else
    every mixer's ``out_proj``): the encoder becomes the identity and every weight still gets a gradient after
    the first step."""
    with torch.no_grad():
        for layer in temporal_encoder.layers:
            last = [layer.merge_proj] if layer.merge_proj is not None else [
                m.out_proj for m in (layer.forward_mixer, layer.backward_mixer) if m is not None and m.out_proj is not None]
            for linear in last:
                linear.weight.zero_()
                if linear.bias is not None:
                    linear.bias.zero_()


def _load_all_but_temporal_encoder(model, folder):
    from safetensors.torch import load_file

    path = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(path):
        raise ValueError(f"{folder}: no model.safetensors to take the weights from.")
    weights = {name: tensor for name, tensor in load_file(path).items()
               if not name.startswith("model.temporal_encoder.")}
    own = model.state_dict()
    wrong = [f"{name} {tuple(t.shape)} (expected {tuple(own[name].shape)})" for name, t in weights.items()
             if name in own and own[name].shape != t.shape]
    missing, unexpected = model.load_state_dict({k: v for k, v in weights.items() if k in own and k not in
                                                 {w.split()[0] for w in wrong}}, strict=False)
    missing = [name for name in missing if not name.startswith("model.temporal_encoder.")]
    unexpected = [name for name in weights if name not in own]
    if wrong or missing or unexpected:
        raise ValueError(f"{folder}: its weights do not fit this layout (shape mismatches: {wrong or 'none'}; "
                         f"missing: {missing or 'none'}; unexpected: {unexpected or 'none'}).")


__all__ = ["BUNDLED_MODEL", "DEMO_CLIPS", "ARMS", "mini_config", "mini_tokenizer", "new_model", "build_initial_checkpoint",
           "bundled_forward_only",
           "zero_residual_outputs"]
