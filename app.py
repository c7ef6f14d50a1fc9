# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The STORM web demo as a Hugging Face Space (or anywhere: `python app.py`).

It serves `storm_hf.web_demo`'s page for the model named by the STORM_MODEL environment variable (a Hub id or
a folder; the bundled miniature model when unset), with at most STORM_MAX_FRAMES frames per video (default
64). Gradio's own variables set the address and port (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT; a Space sets
them). storm_hf is imported from the installed package, else from ./src next to this file (a Space holding
this repository). Space files: see "The web demo" in the README.
"""

import os
import sys
from pathlib import Path

try:
    import storm_hf  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from storm_hf.web_demo import DEFAULT_FRAME_BUDGET, EXAMPLES_DIR, build_demo

demo = build_demo(os.environ.get("STORM_MODEL") or None,
                  budget=int(os.environ.get("STORM_MAX_FRAMES", DEFAULT_FRAME_BUDGET)))

if __name__ == "__main__":
    demo.launch(allowed_paths=[EXAMPLES_DIR])
