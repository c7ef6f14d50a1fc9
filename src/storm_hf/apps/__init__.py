# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The applications: the `storm-hf` command (`cli`), `storm-hf demo` (`demo`) and its web page (`web_demo`)."""
