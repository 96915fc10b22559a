"""Deprecated alias of :mod:`lowbit.commands.share` (the command moved there); warns, then forwards names."""
from __future__ import annotations

import importlib
import warnings

_NEW = "lowbit.commands.share"
warnings.warn(f"lowbit.algorithms.share_cli is deprecated; use {_NEW}", DeprecationWarning, stacklevel=2)


def __getattr__(name: str) -> object:
    # looked up on use, so importing this library package never imports the command line (layering)
    return getattr(importlib.import_module(_NEW), name)
