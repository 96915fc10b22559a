"""Deprecated home of the named codebooks and their helpers; each name now lives with its concept.

- level tables, named codebooks, state levels, ``SHARED_SPEC`` -> :mod:`lowbit.formats`;
- ``Octav``, ``Prop``, ``AbsMean``, ``Fixed``, ``MXScale`` -> :mod:`lowbit.ranges`;
- ``CenteredQuantizer``, ``DoReFaQuantizer``, ``build_quantizer``, ``state_quantizer`` -> :mod:`lowbit.quantizers`;
- double quantization and ``bits_per_param`` -> :mod:`lowbit.qtensor_storage`;
- the 4.6-bit pairs (``FourSixPair``, ``pair46``, ``product_table``, ``lut_dot``) -> :mod:`lowbit.targets.mcu.pairs`.

Reading a name here still works and warns (``DeprecationWarning``) with its new place.
"""
from __future__ import annotations

import importlib
import warnings

_MOVED = {
    **dict.fromkeys(
        ("NF4_LEVELS", "nf4_levels", "minifloat_levels", "pot_levels", "apot_levels", "fp130_levels",
         "bitsym_levels", "dorefa_levels", "state_levels", "CenteredCodebook", "DoReFaCodebook",
         "LearnedCodebook", "SHARED_SPEC"),
        "lowbit.formats",
    ),
    **dict.fromkeys(("Octav", "Prop", "AbsMean", "Fixed", "MXScale"), "lowbit.ranges"),
    **dict.fromkeys(("CenteredQuantizer", "DoReFaQuantizer", "build_quantizer", "state_quantizer"), "lowbit.quantizers"),
    **dict.fromkeys(("DoubleQuantScales", "double_quantize_scales", "double_quantize", "bits_per_param"),
                    "lowbit.qtensor_storage"),
    **dict.fromkeys(("FourSixPair", "pair46", "product_table", "lut_dot"), "lowbit.targets.mcu.pairs"),
}  # fmt: skip

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> object:
    """Resolve a moved name from its new module, with a DeprecationWarning naming it."""
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'lowbit.codebooks' has no attribute {name!r}")
    warnings.warn(f"lowbit.codebooks.{name} moved to {home}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
