# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The STORM web demo as a Hugging Face Space (or anywhere: `python app.py`).

It serves `storm_hf.apps.web_demo`'s page for the model named by the STORM_MODEL environment variable (a Hub id or
a folder; the bundled miniature model when unset), with at most STORM_MAX_FRAMES frames per video (default
64) and uploads of at most STORM_MAX_UPLOAD_MB MB (default 500, so that one upload cannot fill the disk).
Gradio's own variables set the address and port (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT; a Space sets
them). storm_hf comes from ./src next to this file when it is there (a checkout, or a Space made from one:
see "The web demo" in the README), else from the installed package.
"""

import os
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "src"
if (SOURCE / "storm_hf" / "__init__.py").is_file():
    sys.path.insert(0, str(SOURCE))

from storm_hf.apps.web_demo import DEFAULT_FRAME_BUDGET, DEFAULT_MAX_UPLOAD_MB, build_demo

demo = build_demo(os.environ.get("STORM_MODEL") or None,
                  budget=int(os.environ.get("STORM_MAX_FRAMES", DEFAULT_FRAME_BUDGET)),
                  max_upload_mb=float(os.environ.get("STORM_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)))

if __name__ == "__main__":
    demo.launch(**demo.storm_launch_kwargs)  # the example clips' folder and the upload cap
