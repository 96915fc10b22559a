"""Deprecated alias of :mod:`lowbit.commands.export_c` (the command moved there); warns, then forwards names."""
from __future__ import annotations

import importlib
import warnings

_NEW = "lowbit.commands.export_c"
warnings.warn(f"lowbit.targets.mcu.cli is deprecated; use {_NEW}", DeprecationWarning, stacklevel=2)


def __getattr__(name: str) -> object:
    # looked up on use, so importing this library package never imports the command line (layering)
    return getattr(importlib.import_module(_NEW), name)
