# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""STORM's token reduction (k, p, s) set on a model and its processor together, so that the processor's
placeholder counts always match the visual tokens the model produces."""

from __future__ import annotations

from contextlib import contextmanager


def set_sampling_stride(model, processor, stride: int):
    """Test-time temporal sampling ``s`` on both the model and the processor, so token counts agree."""
    set_token_reduction(model, processor, temporal_sample_s=stride)


def set_token_reduction(model, processor, temporal_pool_k=None, spatial_pool_p=None, temporal_sample_s=None):
    """Set STORM's token reduction (k, p, s; None keeps a value) on the model's config and on its processor
    at once, so the processor's placeholder counts always match the visual tokens the model produces.
    Returns the previous (k, p, s)."""
    before = (model.config.temporal_pool_k, model.config.spatial_pool_p, model.config.temporal_sample_s)
    values = {"temporal_pool_k": temporal_pool_k, "spatial_pool_p": spatial_pool_p,
              "temporal_sample_s": temporal_sample_s}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        setattr(model.config, name, value)
        setattr(processor, name, value)
    return before


@contextmanager
def following_the_model(model, processor, temporal_pool_k=None, spatial_pool_p=None, temporal_sample_s=None):
    """For the block: the given k / p / s on the model, and the processor counting tokens as the model then
    produces them (the model's config is the one setting: changing only ``model.config.temporal_sample_s``
    is enough); both are put back afterwards."""
    keep = ("temporal_pool_k", "spatial_pool_p", "temporal_sample_s")
    processor_before = tuple(getattr(processor, name) for name in keep)
    model_before = set_token_reduction(model, processor, temporal_pool_k, spatial_pool_p, temporal_sample_s)
    try:
        set_token_reduction(model, processor, *(getattr(model.config, name) for name in keep))
        check_agreement(model, processor)  # the grid (image size, patch, pixel shuffle) must match too
        yield
    finally:
        set_token_reduction(model, processor, *model_before)
        for name, value in zip(keep, processor_before):
            setattr(processor, name, value)


def check_agreement(model, processor):
    """Raise a ValueError unless the processor counts visual tokens as the model produces them."""
    c = model.config
    ours = (c.grid_size, c.temporal_pool_k, c.spatial_pool_p, c.temporal_sample_s)
    theirs = (processor.grid_size, processor.temporal_pool_k, processor.spatial_pool_p, processor.temporal_sample_s)
    if ours != theirs:
        raise ValueError(
            f"The processor counts visual tokens for (grid, k, p, s) = {theirs} but the model produces {ours}; "
            "make them agree (StormProcessor.from_config(model.config, ...) or set both)."
        )
