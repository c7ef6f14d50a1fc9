"""mamba_ssm and causal_conv1d on a CPU: their pure-PyTorch references, importable without CUDA builds.

Installed by `.ci/mamba_ssm_env` (from source, without compiling the CUDA extensions). Importing them needs
stand-ins for the missing compiled modules; the kernel entry points are then pointed at the references:

    ssi.selective_scan_fn -> selective_scan_ref, ssi.causal_conv1d_fn -> causal_conv1d_ref, and in
    mamba_simple: selective_scan_fn, mamba_inner_fn -> mamba_inner_ref, causal_conv1d_fn / _update -> refs,
    selective_state_update -> None (its Triton kernel needs CUDA), so `Mamba` runs both of its paths and
    `step()` on CPU.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace


def load() -> SimpleNamespace | None:
    """The references, or None when mamba_ssm / causal_conv1d are not installed."""
    import importlib.util

    if importlib.util.find_spec("mamba_ssm") is None or importlib.util.find_spec("causal_conv1d") is None:
        return None
    before = set(sys.modules)
    try:
        return _load()
    finally:
        # Forget the modules (and the stand-ins) again, so that other code that probes for the kernels
        # (transformers' own Mamba) still finds none; the functions returned keep their modules alive.
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda"):
                del sys.modules[name]


def _load() -> SimpleNamespace:
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)  # a CPU build has no compiled extension
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref, causal_conv1d_update_ref
    from mamba_ssm.models.mixer_seq_simple import _init_weights
    from mamba_ssm.modules import mamba_simple
    from mamba_ssm.ops import selective_scan_interface as ssi

    ssi.selective_scan_fn = ssi.selective_scan_ref
    ssi.causal_conv1d_fn = causal_conv1d_ref
    mamba_simple.selective_scan_fn = ssi.selective_scan_ref
    mamba_simple.mamba_inner_fn = ssi.mamba_inner_ref
    mamba_simple.causal_conv1d_fn = causal_conv1d_ref
    mamba_simple.causal_conv1d_update = causal_conv1d_update_ref
    mamba_simple.selective_state_update = None
    return SimpleNamespace(selective_scan_ref=ssi.selective_scan_ref, mamba_inner_ref=ssi.mamba_inner_ref,
                           causal_conv1d_ref=causal_conv1d_ref, Mamba=mamba_simple.Mamba,
                           init_weights=_init_weights)
