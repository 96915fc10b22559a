"""Exact nearest-level rounding by a look-up table: O(1) per element, the fast path of every codebook.

A value's table row is :func:`_bins` -- one affine bin index over the whole range, plus
finer ones over the regions where levels crowd (next to the threshold for
threshold-centred state levels) -- so that no row holds two midpoints. A value in a row
rounds to its upper level if it is above the row's midpoint (+inf when the row holds
none), else to its lower level. The midpoints' rows are computed with the same float32
operations, so the result equals ``bucketize`` on the midpoints (ties to the lower
level), and :func:`exact` checks that before a table is used.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Table", "build_table", "table_round", "exact"]

Table = tuple[list[tuple[float, float, int]], Tensor]


def _boundary_points(levels: Tensor, mids: Tensor) -> tuple[Tensor, Tensor]:
    """Every midpoint and the float32 just above it, with the nearest-level reference there (ties to the lower)."""
    pts = torch.cat([mids, torch.nextafter(mids, torch.tensor(math.inf)), levels[:1], levels[-1:]])
    return pts, levels[torch.bucketize(pts, mids)]


def exact(rounder: Callable[[Tensor], Tensor], levels: Tensor, mids: Tensor) -> bool:
    """True when ``rounder`` equals nearest-level rounding (``bucketize`` on ``mids``) for every float32.

    ``rounder`` and the reference are both monotone in ``x``, so they agree
    everywhere if they agree at each midpoint and at the float32 just above it.
    """
    pts, ref = _boundary_points(levels, mids)
    return bool(torch.equal(rounder(pts), ref))


def _bins(x: Tensor, terms: Sequence[tuple[float, float, int]]) -> Tensor:
    """Table row of every element: a sum of clamped affine bin indices (monotone in ``x``; NaN reads row 0)."""
    if len(terms) == 1:
        a, b, n = terms[0]
        t = x.mul(a).add_(b).clamp_(max=n - 1)
        return torch.fmax(t, torch.zeros((), dtype=t.dtype), out=t).int()  # fmax: NaN -> 0, >= 0 so truncation floors
    j = None
    for a, b, n in terms:
        t = x.mul(a).add_(b).floor_().clamp_(max=n - 1)
        t = torch.fmax(t, torch.zeros((), dtype=t.dtype), out=t)
        j = t if j is None else j.add_(t)
    return j.int()  # type: ignore[union-attr]


def build_table(levels: Tensor, mids: Tensor, max_bins: int = 1 << 16, max_terms: int = 3) -> Table | None:
    """The look-up table for exact nearest-level rounding onto ``levels`` (float32), or None if none small resolves them."""
    lv, mids = levels.float(), mids.float()
    terms: list[tuple[float, float, int]] = []
    region = mids
    while len(terms) < max_terms and region.numel():
        span = float(region[-1] - region[0]) if region.numel() > 1 else 1.0
        gaps = region[1:] - region[:-1]
        min_gap = float(gaps.min()) if gaps.numel() else 1.0
        if not (span > 0 and min_gap > 0 and math.isfinite(span / min_gap)):
            return None
        bins = max(8, 2 * math.ceil(span / min_gap))
        while True:
            a = torch.tensor(min(bins, max_bins) / span, dtype=torch.float32)
            trial = terms + [(float(a), float(2.0 - region[0] * a), min(bins, max_bins) + 5)]
            n = sum(t[2] - 1 for t in trial) + 1
            counts = torch.bincount(_bins(mids, trial).long(), minlength=n)
            if int(counts.max()) <= 1 or bins >= max_bins:
                break
            bins *= 2
        terms = trial
        jm = _bins(mids, terms).long()
        if int(counts.max()) <= 1:
            below = torch.cumsum(counts, 0) - counts  # midpoints in earlier rows = index of the lower level
            has = torch.full((n,), math.inf)
            has[jm] = mids
            lo = lv[below]
            hi = torch.where(counts > 0, lv[(below + 1).clamp(max=lv.numel() - 1)], lo)
            # (midpoint, lower, upper, pad) as float32, packed into one 16-byte element per row
            packed = torch.stack([has, lo, hi, torch.zeros(n)], 1).contiguous().view(torch.complex128).reshape(n)
            table = (terms, packed)
            return table if exact(lambda x: table_round(x, table), lv, mids) else None
        region = mids[counts[jm] > 1]  # the crowded midpoints get a finer index of their own
    return None


def table_round(x: Tensor, table: Table) -> Tensor:
    """Nearest level of every element of ``x`` (float32, CPU) through ``table``."""
    terms, packed = table
    # one gather of 16-byte rows by int32 index (cheaper than an int64 take): midpoint, lower, upper, pad
    mid, lo, hi, _ = packed.index_select(0, _bins(x, terms).reshape(-1)).view(torch.float32).view(-1, 4).unbind(1)
    return torch.where(x.reshape(-1) > mid, hi, lo).view(x.shape)
