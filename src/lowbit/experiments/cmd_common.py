"""Deprecated alias of :mod:`lowbit.commands._common` (the command moved there); warns, then forwards names."""
from __future__ import annotations

import importlib
import warnings

_NEW = "lowbit.commands._common"
warnings.warn(f"lowbit.experiments.cmd_common is deprecated; use {_NEW}", DeprecationWarning, stacklevel=2)


def __getattr__(name: str) -> object:
    # looked up on use, so importing this library package never imports the command line (layering)
    return getattr(importlib.import_module(_NEW), name)
