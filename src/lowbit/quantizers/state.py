"""State quantizers for spiking neurons: nearest of absolute state levels, straight-through gradient.

One implementation: the levels are a :class:`~lowbit.formats.Codebook`
(:func:`lowbit.formats.state_levels`) and rounding is the codebook's own (an exact
look-up table, O(1) per element, or ``bucketize``). :func:`state_quantizer` wraps it
as a plain :class:`Quantizer` (encodes to QTensors, saves with a model);
:class:`StateQuantizer` as the light module neurons call inside their time loops
(no scale, counts clipped states; :func:`lowbit.snn.state_quantizer` builds one).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..formats import Codebook, state_levels
from ..formats.lut import Table
from ..ranges import Fixed
from ..signatures import parameters_of
from .base import Quantizer

__all__ = ["state_quantizer", "StateQuantizer"]


@parameters_of(state_levels)  # kind, num_bits, threshold, lower_limit, upper_limit, multiplier
def state_quantizer(**a: Any) -> Quantizer:
    """A ready-to-call state quantizer: nearest absolute level, scale 1 frozen, straight-through gradient.

    A plain :class:`Quantizer` (encodes to QTensors, saves with a model). Inside neurons' time loops
    prefer :func:`lowbit.snn.state_quantizer`: the same levels and rounding, and it counts clipped states.
    """
    fmt = state_levels(**a)
    return Quantizer(fmt, Fixed()).fit(fmt.levels)


class _NearestLevel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, rounder) -> Tensor:  # type: ignore[no-untyped-def, override]
        return rounder(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None  # identity straight-through estimator, no clipping mask


class StateQuantizer(nn.Module):
    """Rounds states to the nearest of a fixed level set; straight-through gradient; counts clipped states.

    Ties go to the lower level (as ``bucketize`` on the midpoints). Rounding is the
    :class:`~lowbit.formats.Codebook`'s: an exact look-up table for float32 on the CPU
    (O(1) per element, no [N, L] tensor), ``bucketize`` otherwise.
    """

    levels: Tensor
    mids: Tensor

    def __init__(self, levels: Sequence[float] | Tensor | Codebook, *, kind: str = "custom", num_bits: int | None = None) -> None:
        super().__init__()
        # validates: >= 2 levels, finite, strictly increasing
        self.fmt = levels if isinstance(levels, Codebook) else Codebook(levels)
        self.register_buffer("levels", self.fmt.levels.clone(), persistent=False)
        self.register_buffer("mids", self.fmt._mid.clone(), persistent=False)
        self.kind = kind
        self.num_bits = num_bits if num_bits is not None else self.fmt.bits
        self.track = False
        self.n_seen = 0
        self.n_clipped = 0

    @property
    def _table(self) -> Table | None:
        """The codebook's exact look-up table (None: it rounds by ``bucketize``)."""
        return self.fmt.table()

    @property
    def lo(self) -> float:
        """Lowest level (the codebook's)."""
        return self.fmt.lo

    @property
    def hi(self) -> float:
        """Highest level (the codebook's)."""
        return self.fmt.hi

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_bits={self.num_bits}, range=[{self.lo:.4g}, {self.hi:.4g}]"

    def round(self, x: Tensor) -> Tensor:
        """Nearest level of every element, no gradient bookkeeping."""
        return self.fmt.quantize(x)

    def forward(self, x: Tensor) -> Tensor:
        """Nearest level of every element (ties to the lower level); gradient passes straight through."""
        if self.track:
            with torch.no_grad():
                self.n_seen += x.numel()
                self.n_clipped += int(((x < self.levels[0]) | (x > self.levels[-1])).sum())
        return _NearestLevel.apply(x, self.round)

    def rounder(self) -> Callable[[Tensor], Tensor] | None:
        """The plain rounding function for a neuron to apply inside its own update, or None while counting clips."""
        return None if self.track else self.round

    def start_tracking(self) -> None:
        """Reset the clip counters and start counting."""
        self.track, self.n_seen, self.n_clipped = True, 0, 0

    def stop_tracking(self) -> float:
        """Stop counting; return the fraction of states that fell outside the level range."""
        self.track = False
        return self.n_clipped / self.n_seen if self.n_seen else 0.0
