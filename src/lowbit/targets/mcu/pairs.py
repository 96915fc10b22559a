"""The 4.6-bit pairs: activation and weight operands (``sym<N>``) whose products fit an int8 table.

The formats themselves are codebooks (``sym<N>``, marked with ``Codebook.pair_q``); this
module holds the pair arithmetic the MCU target runs: the product table and the
table-driven dot product (:func:`lut_dot`, also the NumPy reference's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...formats import Codebook, sym_codebook, sym_levels

__all__ = ["FourSixPair", "pair46", "product_table", "lut_dot"]

_sym_levels = sym_levels


@dataclass(frozen=True)
class FourSixPair:
    """A 4.6-bit pair: ``nx`` activation levels and ``nw`` weight levels whose products fit in int8."""

    nx: int
    nw: int

    @property
    def x_format(self) -> Codebook:
        """Integer activation levels ``-Qx..Qx``."""
        return sym_codebook(self.nx)

    @property
    def w_format(self) -> Codebook:
        """Integer weight levels ``-Qw..Qw``."""
        return sym_codebook(self.nw)

    @property
    def bits(self) -> float:
        """Effective bits per operand: ``log2(nx * nw) / 2``."""
        return math.log2(self.nx * self.nw) / 2

    def table(self) -> Tensor:
        """The int8 product table ``[nx, nw]`` indexed by (activation code, weight code)."""
        return product_table(self.nx, self.nw)


def pair46(nw: int) -> FourSixPair:
    """The pair for ``nw`` (odd) weight levels: ``nx = 2 floor(127 / floor(nw / 2)) + 1`` (e.g. 3 -> 255, 17 -> 31)."""
    _sym_levels(nw)
    return FourSixPair(2 * (127 // (nw // 2)) + 1, nw)


def product_table(nx: int, nw: int) -> Tensor:
    """All ``nx * nw`` products of the integer levels as int8, indexed by the two codes."""
    x, w = _sym_levels(nx), _sym_levels(nw)
    if x[-1] * w[-1] > 127:
        raise ValueError(f"nx={nx}, nw={nw}: the largest product {int(x[-1] * w[-1])} does not fit in int8 (max 127)")
    return (x[:, None] * w[None, :]).to(torch.int8)


def lut_dot(x_codes: Tensor, w_codes: Tensor, table: Tensor, *, dtype: torch.dtype = torch.int32) -> Tensor:
    """Dot products over the last axis through the product table (broadcasts like ``(x * w).sum(-1)``).

    Sums in ``dtype``: int32 as the C kernel does; the NumPy reference sums in int64
    so that an accumulator leaving int32 shows up instead of wrapping.
    """
    if x_codes.is_floating_point() or w_codes.is_floating_point():
        raise TypeError("x_codes and w_codes must be integer code tensors")
    if table.dim() != 2:
        raise ValueError(f"table must be 2-D [nx, nw], got shape {tuple(table.shape)}")
    x, w = torch.broadcast_tensors(x_codes.long(), w_codes.long())
    flat = table.reshape(-1).to(dtype)
    return flat[x * table.shape[1] + w].sum(dim=-1, dtype=dtype)
