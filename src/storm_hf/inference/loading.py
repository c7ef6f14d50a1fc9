# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Loading a STORM and its processor for the apps, the evaluation and the integrations: a checkpoint folder, a
Hub id, or the bundled model when none is named, with clear errors for paths that are not checkpoints."""

from __future__ import annotations

import os


def load(model_name_or_path=None, device="cpu"):
    """(model, processor) from a checkpoint folder or Hub id; the bundled model when None."""
    from ..miniature import BUNDLED_MODEL
    from ..modeling_storm import StormForConditionalGeneration
    from ..processing_storm import StormProcessor

    path = model_name_or_path or BUNDLED_MODEL
    if path == BUNDLED_MODEL and not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"The bundled model is missing from this installation ({path}); rebuild it with "
                                "`python benchmarks/temporal_qa.py --bundle` or pass --model.")
    path = str(path)
    # A local path that is not a folder would otherwise be tried as a Hub id, with the Hub's error about its form.
    if os.path.isfile(path):
        raise NotADirectoryError(f"Model {path}: this is a file; give the checkpoint's folder (what "
                                 "save_pretrained wrote) or a Hub id such as 'user/name'.")
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path
    if looks_local and not os.path.isdir(path):
        raise FileNotFoundError(f"Model {path}: no such folder (give a checkpoint folder, or a Hub id "
                                "such as 'user/name').")
    model = StormForConditionalGeneration.from_pretrained(path).to(device).eval()
    processor = StormProcessor.from_pretrained(path)
    return model, processor
