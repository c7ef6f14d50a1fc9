# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""STORM in other tools: lmms-eval (`lmms_eval`, registered by `lmms_eval_entry`) and the LLaVA-OneVision
converter (`convert_llava_onevision`). Each imports its tool only when used."""
