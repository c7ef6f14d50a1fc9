# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""lmms-eval's plugin entry point (group ``lmms_eval.models``, see setup.py): the manifest of the `storm` model.

lmms-eval calls `manifests()` while it builds its model registry; the import of lmms-eval stays inside it
(importing `lmms_eval.models` from this module's top would be circular)."""


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="storm", simple_class_path="storm_hf.integrations.lmms_eval.Storm",
                          aliases=("storm_hf",))]
