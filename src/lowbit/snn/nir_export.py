"""Deprecated alias of :mod:`lowbit.targets.nir` (NIR export is a target); warns, then forwards names."""
from __future__ import annotations

import importlib
import warnings

_NEW = "lowbit.targets.nir"
warnings.warn(f"lowbit.snn.nir_export is deprecated; use {_NEW}", DeprecationWarning, stacklevel=2)


def __getattr__(name: str) -> object:
    # looked up on use, so the snn package never imports a target (layering: targets use snn, not back)
    return getattr(importlib.import_module(_NEW), name)
