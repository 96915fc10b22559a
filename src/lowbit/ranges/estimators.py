"""Ranges and granularity: how the scale is chosen from data.

Everything works on a 2-D *row view* of the tensor, one row per slice that
gets its own scale (granularity): ``tensor`` is one row, ``channel(axis)`` one
row per index along ``axis``, ``group(size)`` one row per block of ``size``
consecutive elements along the last axis.

A range estimator turns rows into a clip interval ``[lo, hi]`` per row; the
``scale_from_range`` step maps that interval onto the format's levels
(symmetric formats: no zero point; unsigned uniform formats: affine with an
integer zero point), optionally rounded to a power of two (fixed point).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .formats import Format, Uniform

__all__ = [
    "Granularity",
    "RangeEstimator",
    "MinMax",
    "Percentile",
    "MSE",
    "register_range",
    "range_from_token",
    "range_names",
    "scale_from_range",
    "fixed_point_scale",
    "percentile",
]


# --------------------------------------------------------------------------- granularity


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


# --------------------------------------------------------------------------- helpers


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
        top = torch.topk(rows, k, dim=1, largest=True, sorted=True).values  # descending
        a, b = top.gather(1, (n - 1 - lo_i)[:, None])[:, 0], top.gather(1, (n - 1 - hi_i)[:, None])[:, 0]
    else:
        k = int(hi_i.max()) + 1
        bot = torch.topk(rows, k, dim=1, largest=False, sorted=True).values  # ascending
        a, b = bot.gather(1, lo_i[:, None])[:, 0], bot.gather(1, hi_i[:, None])[:, 0]
    out = torch.where(frac > 0, a + (b - a) * frac, a)
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


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


# --------------------------------------------------------------------------- estimators


class RangeEstimator:
    """Turns a row view of data into a clip interval ``[lo, hi]`` per row."""

    spec: str = "?"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        """Per-row (lo, hi) clip interval."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class MinMax(RangeEstimator):
    """The full data range: no clipping."""

    spec = "minmax"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        lo, hi = torch.aminmax(rows, dim=1)
        return lo, hi


class Percentile(RangeEstimator):
    """Clip at the p-th percentile.

    Symmetric formats follow mlGeNN: ``max(pct_p(positives), pct_p(|non-positives|))``
    (zeros count as non-positive), a symmetric interval. Affine formats clip at
    the (100-p)-th and p-th percentiles.
    """

    def __init__(self, p: float) -> None:
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        self.p = float(p)
        self.spec = f"p{p:g}"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        # A percentile can hide an Inf or NaN, so check the data itself.
        if not torch.isfinite(rows).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        if fmt.symmetric:
            pos = percentile(rows, self.p, rows > 0)
            neg = percentile(-rows, self.p, rows <= 0)
            # A row with no positives (or no non-positives) uses the other side.
            m = torch.fmax(pos, neg)
            return -m, m
        return percentile(rows, 100 - self.p), percentile(rows, self.p)


class MSE(RangeEstimator):
    """Search the clip that minimises the squared quantization error, per row.

    A coarse grid of clip ratios in [0.2, 1] of the full range, then a fine
    grid around the best; each candidate is one vectorised pass over all rows.
    Rows longer than ``max_row`` are searched on an evenly strided subsample
    of that many elements (the chosen clip then applies to the whole row).
    """

    spec = "mse"

    def __init__(self, coarse: int = 16, fine: int = 8, max_row: int = 16384) -> None:
        self.coarse, self.fine, self.max_row = coarse, fine, max_row

    @staticmethod
    def _err(rows: Tensor, lo: Tensor, hi: Tensor, fmt: Format) -> Tensor:
        scale, zp = scale_from_range(lo, hi, fmt)
        s = scale[:, None]
        xn = rows / s
        if zp is not None:
            z = zp[:, None].to(rows.dtype)
            xn += z
            q = fmt.quantize(xn).sub_(z)
        else:
            q = fmt.quantize(xn)
        return q.mul_(s).sub_(rows).square_().sum(dim=1)

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        lo, hi = torch.aminmax(rows, dim=1)
        _check_finite(lo, hi)
        if rows.shape[1] > self.max_row:
            step_cols = -(-rows.shape[1] // self.max_row)
            rows = rows[:, ::step_cols]
        best_r = torch.ones_like(lo)
        best_e = self._err(rows, lo, hi, fmt)
        step = 0.8 / (self.coarse - 1)
        for r in torch.linspace(0.2, 1.0, self.coarse).tolist()[:-1]:
            e = self._err(rows, lo * r, hi * r, fmt)
            better = e < best_e
            best_e, best_r = torch.where(better, e, best_e), torch.where(better, torch.full_like(best_r, r), best_r)
        center = best_r.clone()
        for k in torch.linspace(-1.0, 1.0, self.fine + 2)[1:-1].tolist():
            r = (center + k * step).clamp(0.05, 1.0)
            e = self._err(rows, lo * r, hi * r, fmt)
            better = e < best_e
            best_e, best_r = torch.where(better, e, best_e), torch.where(better, r, best_r)
        return lo * best_r, hi * best_r


# --------------------------------------------------------------------------- registry

_RANGES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], RangeEstimator], str]] = []


def register_range(pattern: str, factory: Callable[[re.Match[str]], RangeEstimator], help: str = "") -> None:
    """Register a range estimator under a spec token pattern (full-match regex)."""
    _RANGES.append((re.compile(pattern), factory, help or pattern))


def range_from_token(token: str) -> RangeEstimator | None:
    """The range estimator named by ``token``, or None if no range has that name."""
    for pat, factory, _ in reversed(_RANGES):
        m = pat.fullmatch(token)
        if m:
            return factory(m)
    return None


def range_names() -> list[str]:
    """Human-readable list of the registered range tokens."""
    return [h for _, _, h in _RANGES]


register_range(r"minmax", lambda m: MinMax(), "minmax")
register_range(r"p(?P<p>\d+(?:\.\d+)?)", lambda m: Percentile(float(m.group("p"))), "p<percentile> (e.g. p99, p99.9)")
register_range(r"mse", lambda m: MSE(), "mse")
