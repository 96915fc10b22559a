"""Granularity: which elements share a scale, and the 2-D row view (one row per scale)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Granularity"]


@dataclass(frozen=True)
class Granularity:
    """Which elements share a scale: ``tensor``, ``channel`` (with ``axis``) or ``group`` (with ``size``)."""

    kind: str = "tensor"
    axis: int = 0
    size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("tensor", "channel", "group"):
            raise ValueError(f"granularity must be 'tensor', 'channel' or 'group', got {self.kind!r}")
        if self.kind == "group" and self.size < 1:
            raise ValueError(f"group size must be >= 1, got {self.size}")

    @property
    def spec(self) -> str:
        """Spec token: ``tensor``, ``channel`` / ``channel<axis>``, ``group<size>``."""
        if self.kind == "channel":
            return "channel" if self.axis == 0 else f"channel{self.axis}"
        if self.kind == "group":
            return f"group{self.size}"
        return "tensor"

    @staticmethod
    def from_spec(token: str) -> "Granularity":
        """Parse ``tensor``, ``channel``, ``channel<axis>`` or ``group<size>``."""
        m = re.fullmatch(r"(tensor)|channel(-?\d+)?|group(\d+)", token)
        if not m:
            raise ValueError(f"unknown granularity {token!r}; valid: tensor, channel, channel<axis>, group<size>")
        if m.group(1):
            return Granularity("tensor")
        if token.startswith("channel"):
            return Granularity("channel", axis=int(m.group(2) or 0))
        return Granularity("group", size=int(m.group(3)))

    def check(self, shape: torch.Size) -> None:
        """Raise ValueError if this granularity cannot apply to ``shape``."""
        if self.kind == "channel":
            if len(shape) == 0 or not -len(shape) <= self.axis < len(shape):
                raise ValueError(f"axis {self.axis} is out of range for a tensor of shape {tuple(shape)}")
        elif self.kind == "group":
            if len(shape) == 0 or shape[-1] % self.size:
                raise ValueError(
                    f"group size {self.size} must divide the last dimension of shape {tuple(shape)}"
                )

    def to_rows(self, x: Tensor) -> Tensor:
        """View ``x`` as [n_slices, slice_len], one row per scale."""
        self.check(x.shape)
        if self.kind == "tensor":
            return x.reshape(1, -1)
        if self.kind == "group":
            return x.reshape(-1, self.size)
        if self.axis in (0, -x.dim()):  # output channels of a weight: a plain view, no permute op
            return x.reshape(x.shape[0], -1)
        return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    def from_rows(self, rows: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of :meth:`to_rows`."""
        if self.kind != "channel" or self.axis in (0, -len(shape)):
            return rows.reshape(shape)
        moved = list(shape)
        moved.insert(0, moved.pop(self.axis))
        return rows.reshape(moved).movedim(0, self.axis)

    def n_slices(self, shape: torch.Size) -> int:
        """Number of scales this granularity gives a tensor of ``shape``."""
        self.check(shape)
        if self.kind == "tensor":
            return 1
        if self.kind == "group":
            return math.prod(shape) // self.size
        return shape[self.axis]

