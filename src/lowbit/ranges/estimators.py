"""Range estimators from data: ``minmax``, ``p<pct>``, ``mse`` (the base class ``RangeEstimator``)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..formats import Format
from .registry import register_range
from .scale import _check_finite, all_finite, percentile, scale_from_range

__all__ = ["RangeEstimator", "MinMax", "Percentile", "MSE"]


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
        # A percentile can hide an Inf or NaN, so check the data itself (all_finite: one pass).
        if not all_finite(rows):
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


register_range(r"minmax", lambda m: MinMax(), "minmax")
register_range(r"p(?P<p>\d+(?:\.\d+)?)", lambda m: Percentile(float(m.group("p"))), "p<percentile> (e.g. p99, p99.9)")
register_range(r"mse", lambda m: MSE(), "mse")
