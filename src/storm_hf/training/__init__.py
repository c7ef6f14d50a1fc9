# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning STORM: the video QA data and its collator (`data`), the `storm-hf train` job (`job`: `train`,
`load_config`) and its kill-safe checkpoints (`checkpoints`).

    from storm_hf.training import StormDataCollator, apply_training_stage, load_video_dataset, train
"""

from .data import (
    IGNORE_INDEX,
    PARTS,
    STAGES,
    StormDataCollator,
    VideoQADataset,
    apply_training_stage,
    freeze_parts,
    load_video_dataset,
    trainable_parameters,
)
from .job import load_config, train

__all__ = ["load_video_dataset", "VideoQADataset", "StormDataCollator", "apply_training_stage", "freeze_parts",
           "trainable_parameters", "STAGES", "PARTS", "IGNORE_INDEX", "train", "load_config"]
