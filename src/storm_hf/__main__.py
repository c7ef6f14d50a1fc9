# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""`python -m storm_hf demo ...` / `python -m storm_hf train CONFIG`: the `storm-hf` command."""

from .apps.cli import main

raise SystemExit(main())
