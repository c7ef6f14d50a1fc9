# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""The module paths that storm_hf 0.1 documented before its layout became layered, kept importable for one
release: importing one (or running it with ``python -m``) gives the module where the code now lives, with a
FutureWarning that names the new path. Nothing else of the package goes through here.

The table is the whole mechanism; `install` puts a finder for exactly these names on `sys.meta_path`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old path -> (new path, what ``python -m OLD`` runs now)
MOVED = {
    "storm_hf.temporal_qa": "storm_hf.miniature.temporal_qa",
    "storm_hf.tiny": "storm_hf.miniature.tiny",
    "storm_hf.demo": "storm_hf.apps.demo",
    "storm_hf.web_demo": "storm_hf.apps.web_demo",
    "storm_hf.cli": "storm_hf.apps.cli",
    "storm_hf.train": "storm_hf.training.job",
    "storm_hf.eval_runner": "storm_hf.evaluation.runner",
    "storm_hf.lmms_eval_model": "storm_hf.integrations.lmms_eval",
    "storm_hf.lmms_eval_entry": "storm_hf.integrations.lmms_eval_entry",
    "storm_hf.convert_llava_onevision_to_storm": "storm_hf.integrations.convert_llava_onevision",
}
# What ``python -m OLD ARGS`` ran, as the code that runs it now (the old train module ran the `storm-hf` command).
RUN_AS_MAIN = {
    "storm_hf.train": "import sys\nfrom storm_hf.apps.cli import main\nraise SystemExit(main(['train', *sys.argv[1:]]))\n",
}


def _warn(old: str) -> None:
    warnings.warn(f"{old} moved to {MOVED[old]} in storm_hf 0.2; the old path will be removed in the next release.",
                  FutureWarning, stacklevel=3)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of `MOVED` and loads each as the module at its new path (the same module object, so
    classes and state are shared)."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def __init__(self):
        self._specs = {}  # old path -> the spec of the module at its new path

    def create_module(self, spec):
        _warn(spec.name)
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__  # the import machinery overwrites the returned module's __spec__
        return module

    def exec_module(self, module):
        old = module.__spec__.name
        module.__spec__ = self._specs.pop(old)  # nothing to run: it was executed at its new path

    def get_code(self, name):
        """``python -m OLD``: runpy asks for the code to run as ``__main__``."""
        _warn(name)
        new = MOVED[name]
        source = RUN_AS_MAIN.get(name, f"import runpy\nrunpy.run_module({new!r}, run_name='__main__', alter_sys=True)\n")
        return compile(source, f"<{name}, moved to {new}>", "exec")


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
