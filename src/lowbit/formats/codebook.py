"""``Codebook``: any sorted set of levels; nearest level by an exact look-up table, else ``bucketize`` on the midpoints."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .base import _MAX_BITS, Format, _code_dtype, _refuse_nan
from .lut import Table, build_table, table_round

__all__ = ["Codebook"]


_TABLES: dict[tuple[bytes, bytes], Table | None] = {}  # level set -> its table, shared by every instance
_MAX_TABLES = 256
_MAX_TABLE_LEVELS = 4096  # past this a table is large and slow to build; bucketize is fine


class Codebook(Format):
    """Any sorted set of levels; nearest-level encoding and table decoding.

    Ties (a value exactly on the midpoint of two levels) go to the lower level.
    Storage bits are ``ceil(log2(len(levels)))`` (at least 1). Rounding float32 on the
    CPU goes through an exact look-up table (:mod:`lowbit.formats.lut`; O(1) per element,
    built on first use and shared by codebooks with the same levels) where a small one
    resolves the levels; otherwise, and for other dtypes and devices, ``bucketize``.
    """

    #: Q when the levels are the integers ``-Q..Q`` of a 4.6-bit pair operand (set by ``sym<N>``), else None;
    #: targets ask this instead of parsing the spec name.
    pair_q: int | None = None
    _table: Table | None = None
    _table_of: Tensor | None = None  # the levels tensor _table was made for

    def __init__(self, levels: Sequence[float] | Tensor, name: str | None = None) -> None:
        lv = torch.as_tensor(levels, dtype=torch.float32).flatten()
        if lv.numel() < 2:
            raise ValueError(f"levels must hold at least 2 values, got {lv.numel()}")
        if not torch.isfinite(lv).all():
            raise ValueError("levels must be finite")
        if not bool((lv[1:] > lv[:-1]).all()):
            raise ValueError("levels must be strictly increasing (sorted, no duplicates)")
        if lv.numel() > 2**_MAX_BITS:
            raise ValueError(f"levels may hold at most {2**_MAX_BITS} values, got {lv.numel()}")
        self._levels = lv
        gap = lv[1:] - lv[:-1]
        if not torch.isfinite(gap).all():
            raise ValueError("levels must be closer than float32's range (their differences overflow)")
        # a + (b - a) / 2 stays in [a, b) even for adjacent denormals, where
        # (a + b) / 2 can round onto b and send b to the wrong level.
        self._mid = lv[:-1] + gap / 2
        self._bits = max(1, math.ceil(math.log2(lv.numel())))
        self.symmetric = bool(lv[0] < 0)  # one-sided codebooks scale their top only
        self.name = name
        self.spec = name if name is not None else "codebook"

    @property
    def levels(self) -> Tensor:
        return self._levels

    @property
    def bits(self) -> int:
        return self._bits

    def encode(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        _refuse_nan(x)  # bucketize would send NaN to the top code, the table to the bottom one
        return self._encode(x, rounding, generator)

    def _encode(self, x: Tensor, rounding: str, generator: torch.Generator | None) -> Tensor:
        # encode without the NaN check: quantize's stochastic path (the training hot path) uses it
        mid = self._mid.to(device=x.device, dtype=x.dtype)
        if rounding == "nearest":
            # right=False: x == mid[i] gives index i, the lower level.
            return torch.bucketize(x, mid, out_int32=True).to(_code_dtype(self._bits))
        lv = self._levels.to(device=x.device, dtype=x.dtype)
        # Stochastic: pick between the two neighbouring levels with probability
        # proportional to proximity (unbiased inside the range).
        lower = (torch.bucketize(x, lv, right=True) - 1).clamp(0, lv.numel() - 2)
        a, b = lv[lower], lv[lower + 1]
        p_up = ((x - a) / (b - a)).clamp(0, 1)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (lower + (u < p_up).to(torch.int64)).to(_code_dtype(self._bits))

    def decode(self, codes: Tensor) -> Tensor:
        return self._levels.to(codes.device)[codes.long()]

    def table(self) -> Table | None:
        """The exact nearest-level look-up table of these levels, or None when no small table resolves them."""
        if self._table_of is not self._levels:  # once per level set (a learned codebook's levels change)
            table = None
            if self._levels.numel() <= _MAX_TABLE_LEVELS:
                key = (self._levels.numpy().tobytes(), self._mid.numpy().tobytes())
                if key not in _TABLES:
                    if len(_TABLES) >= _MAX_TABLES:
                        _TABLES.pop(next(iter(_TABLES)))
                    _TABLES[key] = build_table(self._levels, self._mid)
                table = _TABLES[key]
            self._table, self._table_of = table, self._levels
        return self._table

    def quantize(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        if rounding != "nearest":
            return self.decode(self._encode(x, rounding, generator)).to(x.dtype)
        if x.dtype == torch.float32 and x.device.type == "cpu":
            table = self.table()
            if table is not None:
                return table_round(x, table)
        # Index the levels with bucketize's own int64 output: no code container round trip.
        lv = self._levels.to(device=x.device, dtype=x.dtype)
        return lv[torch.bucketize(x, self._mid.to(device=x.device, dtype=x.dtype))]
