"""The argument checks every reference and zoo model makes of its input shape and class count."""
from __future__ import annotations

from typing import Sequence

__all__ = ["check_input"]


def check_input(input_shape: Sequence[int], num_classes: int, layout: str, ranks: tuple[int, ...]) -> None:
    """Refuse an ``input_shape`` whose rank is not in ``ranks`` (``layout`` names its axes) and fewer than 2 classes."""
    if len(input_shape) not in ranks:
        raise ValueError(f"input_shape must be {layout}, got {tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
