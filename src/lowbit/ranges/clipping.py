"""Clip rules from the low-bit literature: ``octav`` (OCTAV / BitNetMCU), ``prop``, ``absmean``, ``fixed``, ``mx``."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..formats import Format, Uniform
from ..formats.levels import _int_in
from .estimators import RangeEstimator
from .registry import register_range

__all__ = ["Octav", "Prop", "AbsMean", "Fixed", "MXScale"]


def _clip_to_range(fmt: Format) -> float:
    """Factor from a clip value ``s`` (the edge of the outermost bin) to the range that gives its scale.

    BitNetMCU's uniform types map the clip to ``2^(b-1)`` steps (the edge of the
    outermost bin); the non-uniform ones (FP130, NF4) map it to the top level.
    """
    if isinstance(fmt, Uniform) and fmt.signed:
        edge = float(2 ** (fmt.bits - 1))
    else:  # a codebook may say where its outermost bin ends (the bitsym ones do)
        edge = getattr(fmt, "clip_edge", None) or max(abs(fmt.lo), abs(fmt.hi))
    reach = min(abs(fmt.lo), abs(fmt.hi)) if fmt.lo < 0 < fmt.hi else max(abs(fmt.lo), abs(fmt.hi))
    return reach / edge


class Octav(RangeEstimator):
    """OCTAV clipping (Sakr et al. 2022; BitNetMCU's default): the clip that minimises the expected MSE.

    Fixed-point iteration ``s <- sum(|w| [|w|>s]) / (4^-B/3 * #[|w|<=s] + #[|w|>s])``
    with ``B`` the format's bits, from ``s = mean|w|``, per row.
    """

    def __init__(self, iters: int = 10) -> None:
        self.iters = _int_in("iters", iters, 1, 1000)
        self.spec = "octav" if iters == 10 else f"octav{iters}"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        a = rows.abs()
        if not torch.isfinite(a).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        k, n = 4.0 ** -fmt.bits / 3, a.shape[1]
        s = a.mean(dim=1)
        for _ in range(self.iters):  # iterations, each one vectorised over all rows
            over = a > s[:, None]
            n_over = torch.count_nonzero(over, dim=1)
            s, last = torch.where(over, a, 0.0).sum(dim=1) / (k * (n - n_over) + n_over), s
            if torch.equal(s, last):  # an exact fixed point: further iterations change nothing
                break
        # A row of equal magnitudes makes the iteration flip between 0 and |w|.
        s = torch.where(s > 0, s, a.amax(dim=1))
        h = s * _clip_to_range(fmt)
        return -h, h


class Prop(RangeEstimator):
    """BitNetMCU ``prop`` clipping: ``s = mean|w| / quantscale`` per row (default quantscale 0.25)."""

    def __init__(self, quantscale: float = 0.25) -> None:
        if not (math.isfinite(quantscale) and quantscale > 0):
            raise ValueError(f"quantscale must be a finite number > 0, got {quantscale!r}")
        self.quantscale = float(quantscale)
        self.spec = "prop" if quantscale == 0.25 else f"prop{quantscale:g}"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        s = rows.abs().mean(dim=1)
        if not torch.isfinite(s).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        h = s / self.quantscale * _clip_to_range(fmt)
        return -h, h


class AbsMean(RangeEstimator):
    """mean|w| per row onto the smaller extreme level: scale = mean|w| for ternary (BitNet b1.58) and binary."""

    spec = "absmean"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        s = rows.abs().mean(dim=1)
        if not torch.isfinite(s).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        h = s * min(abs(fmt.lo), abs(fmt.hi)) if fmt.lo < 0 < fmt.hi else s * max(abs(fmt.lo), abs(fmt.hi))
        return -h, h


class Fixed(RangeEstimator):
    """The format's own levels: scale 1, for formats whose levels are absolute (neuron states, learned)."""

    spec = "fixed"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        if not torch.isfinite(rows).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        n = rows.shape[0]
        return torch.full((n,), fmt.lo, device=rows.device), torch.full((n,), fmt.hi, device=rows.device)


class MXScale(RangeEstimator):
    """OCP MX shared scale: ``X = 2^(floor(log2 max|w|) - emax)`` per row, ``emax = floor(log2 top level)``.

    The block maximum may saturate (by up to 25 % for E2M1); ``pow2`` instead picks
    the smallest power of two that clips nothing.
    """

    spec = "mx"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        amax = rows.abs().amax(dim=1).to(torch.float64)
        if not torch.isfinite(amax).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        top = min(abs(fmt.lo), abs(fmt.hi)) if fmt.lo < 0 < fmt.hi else max(abs(fmt.lo), abs(fmt.hi))
        emax = math.floor(math.log2(top))
        _, e = torch.frexp(amax)  # amax = f * 2^e, f in [0.5, 1): floor(log2 amax) = e - 1, exactly
        x = torch.ldexp(torch.ones_like(amax), (e - 1 - emax).to(torch.float64))
        h = torch.where(amax > 0, x * top, torch.zeros_like(amax)).to(rows.dtype)
        return -h, h


register_range(r"octav(?P<n>\d+)?", lambda m: Octav(int(m.group("n") or 10)), "octav / octav<iters>")
register_range(r"prop(?P<q>\d*\.?\d+)?", lambda m: Prop(float(m.group("q") or 0.25)), "prop / prop<quantscale>")
register_range(r"absmean", lambda m: AbsMean(), "absmean")
register_range(r"fixed", lambda m: Fixed(), "fixed (scale 1)")
register_range(r"mx", lambda m: MXScale(), "mx (OCP MX power-of-two block scale)")
