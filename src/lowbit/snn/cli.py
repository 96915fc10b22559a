"""Deprecated alias of :mod:`lowbit.commands.snn` (the command moved there); warns, then forwards names."""
from __future__ import annotations

import importlib
import warnings

_NEW = "lowbit.commands.snn"
warnings.warn(f"lowbit.snn.cli is deprecated; use {_NEW}", DeprecationWarning, stacklevel=2)


def __getattr__(name: str) -> object:
    # looked up on use, so importing this library package never imports the command line (layering)
    return getattr(importlib.import_module(_NEW), name)
