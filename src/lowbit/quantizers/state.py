"""State quantizers for spiking neurons: absolute state levels, scale 1 frozen, straight-through gradient."""
from __future__ import annotations

from ..formats import state_levels
from ..ranges import Fixed
from .base import Quantizer

__all__ = ["state_quantizer"]


def state_quantizer(
    kind: str,
    num_bits: int,
    threshold: float = 1.0,
    lower_limit: float = 0.0,
    upper_limit: float = 0.2,
    multiplier: float | None = None,
) -> Quantizer:
    """A ready-to-call state quantizer: nearest absolute level, scale 1 frozen, straight-through gradient.

    A plain :class:`Quantizer` (encodes to QTensors, saves with a model). Inside neurons' time loops
    prefer :func:`lowbit.snn.state_quantizer`: the same levels and rounding, and it counts clipped states.
    """
    fmt = state_levels(kind, num_bits, threshold, lower_limit, upper_limit, multiplier)
    return Quantizer(fmt, Fixed()).fit(fmt.levels)
