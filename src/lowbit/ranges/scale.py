"""From a clip interval to a scale: ``scale_from_range``, fixed point (power-of-two scales), percentiles."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..formats import Format, Uniform

__all__ = ["percentile", "tail_values", "all_finite", "fixed_point_scale", "scale_from_range"]


def percentile(rows: Tensor, p: float, mask: Tensor | None = None) -> Tensor:
    """Per-row p-th percentile (numpy's default linear interpolation), optionally of masked entries only.

    Rows with no entry in ``mask`` give NaN. Only the tail that holds the
    answer is selected (``topk``), not the whole row sorted.
    """
    n = rows.shape[1]
    if mask is not None:
        rows = torch.where(mask, rows, torch.full_like(rows, -math.inf))  # masked-out entries rank first
        count = mask.sum(dim=1)
    else:
        count = torch.full((rows.shape[0],), n, device=rows.device)
    pos = (n - count).to(torch.float64) + (p / 100.0) * (count.to(torch.float64) - 1).clamp(min=0)
    lo_i = pos.floor().to(torch.int64).clamp(0, n - 1)
    hi_i = pos.ceil().to(torch.int64).clamp(0, n - 1)
    frac = (pos - lo_i.to(torch.float64)).to(rows.dtype)
    if p >= 50:
        k = int((n - lo_i).max())
        top = tail_values(rows, k, largest=True)  # descending
        a, b = top.gather(1, (n - 1 - lo_i)[:, None])[:, 0], top.gather(1, (n - 1 - hi_i)[:, None])[:, 0]
    else:
        k = int(hi_i.max()) + 1
        bot = tail_values(rows, k, largest=False)  # ascending
        a, b = bot.gather(1, lo_i[:, None])[:, 0], bot.gather(1, hi_i[:, None])[:, 0]
    out = torch.where(frac > 0, a + (b - a) * frac, a)
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


def tail_values(rows: Tensor, k: int, largest: bool) -> Tensor:
    """``torch.topk(rows, k, dim=1, largest=largest, sorted=True).values``, found in a fraction of the row.

    Activation ranges take a percentile of every batch in QAT (``a8`` = ``uint8:p99.99``), and
    a full ``topk`` over a large activation costs as much as a convolution. The row is cut
    into blocks; the k blocks with the most extreme block maxima (minima) hold the k most
    extreme values: every other block's values are at most the k-th block maximum, and the
    chosen blocks hold k values at least that large. So ``topk`` over those k blocks (plus
    the row's ragged end) gives the same values. NaN counts as the largest value, as in
    ``topk`` (a block holding NaN has maximum NaN; for the smallest values such a block
    hides its minimum, so a row with NaN takes the full ``topk``).
    """
    n = rows.shape[1]
    bs = 1 << max(3, min(10, round(math.log2(max(n / max(k, 1), 1)) / 2)))  # about sqrt(n/k) values per block
    nb = n // bs
    if rows.dim() != 2 or k < 1 or nb <= 2 * k or n < 4096:
        return torch.topk(rows, k, dim=1, largest=largest, sorted=True).values
    r = rows.shape[0]
    blocks = rows[:, : nb * bs].reshape(r, nb, bs)
    ext = blocks.amax(dim=2) if largest else blocks.amin(dim=2)
    if not largest and bool(torch.isnan(ext).any()):  # amin hides a NaN block's other values: no shortcut
        return torch.topk(rows, k, dim=1, largest=False, sorted=True).values
    idx = torch.topk(ext, k, dim=1, largest=largest, sorted=False).indices
    cand = blocks.gather(1, idx[:, :, None].expand(r, k, bs)).reshape(r, k * bs)
    if nb * bs < n:
        cand = torch.cat([cand, rows[:, nb * bs :]], dim=1)
    return torch.topk(cand, k, dim=1, largest=largest, sorted=True).values


def all_finite(x: Tensor) -> bool:
    """``bool(torch.isfinite(x).all())`` in one pass: the minimum and maximum are finite (NaN spreads to both)."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _check_finite(lo: Tensor, hi: Tensor) -> None:
    # Range statistics are computed anyway, so checking them costs nothing
    # and catches NaN/Inf anywhere in the data for min/max based ranges.
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")


def fixed_point_scale(max_abs: Tensor, fmt: Format) -> Tensor:
    """Power-of-two scale (fixed point) whose range covers ``max_abs``: mlGeNN's fit.

    ``scale = 2^(floor(log2(max_abs / L)) + 1)`` with ``L = max(|lo|, |hi|)`` of the
    levels. For a signed b-bit integer (L = 2^(b-1)) this is exactly mlGeNN's
    ``2^(high_bit - (b - 2))`` with ``high_bit = floor(log2(max_abs))``.
    """
    L = max(abs(fmt.lo), abs(fmt.hi))
    m = max_abs.to(torch.float64)
    # frexp gives m = f * 2^e with f in [0.5, 1): floor(log2 m) = e - 1 exactly,
    # with none of log()'s rounding error at exact powers of two.
    _, e = torch.frexp(m / L)
    scale = torch.ldexp(torch.ones_like(m), e.to(torch.float64))
    # All-zero rows: any scale is exact; 1.0 keeps the codes at zero.
    return torch.where(m > 0, scale, torch.ones_like(m)).to(torch.float32)


def scale_from_range(lo: Tensor, hi: Tensor, fmt: Format, pow2: bool = False) -> tuple[Tensor, Tensor | None]:
    """Scale (and integer zero point, or None) that maps ``[lo, hi]`` per row onto the format's levels."""
    _check_finite(lo, hi)
    tiny = torch.finfo(torch.float32).tiny
    if isinstance(fmt, Uniform) and not fmt.signed:
        # Affine (unsigned integers): include zero so that 0.0 is exact.
        lo0, hi0 = lo.clamp(max=0), hi.clamp(min=0)
        if pow2:
            scale = fixed_point_scale(hi0 - lo0, Uniform(fmt.bits + 1, True))
        else:
            span = (hi0 - lo0) / (fmt.qmax - fmt.qmin)
            scale = torch.where(span > tiny, span, torch.ones_like(span)).to(torch.float32)
        zp = torch.clamp(torch.round(fmt.qmin - lo0 / scale), fmt.qmin, fmt.qmax).to(torch.int32)
        return scale.to(torch.float32), zp
    if fmt.lo >= 0:
        # One-sided grid (a codebook of non-negative levels): scale the top;
        # negatives clip to the lowest level.
        max_abs = hi.clamp(min=0)
        need = max_abs / fmt.hi
    else:
        # Smallest scale at which both ends fit: max(hi / hi_level, lo / lo_level).
        max_abs = torch.maximum(hi.abs(), lo.abs())
        need = lo.clamp(max=0) / fmt.lo
        if fmt.hi > 0:
            need = torch.maximum(need, hi.clamp(min=0) / fmt.hi)
    if pow2:
        return fixed_point_scale(max_abs, fmt), None
    scale = torch.where(need > tiny, need, torch.ones_like(need))
    return scale.to(torch.float32), None

