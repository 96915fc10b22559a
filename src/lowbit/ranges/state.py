"""State ranges calibrated from observed membrane potentials (spiking neurons), a registered range (``state``).

:func:`calibrate_state_range` gives snnTorch-style ``(lower_limit, upper_limit)`` for
:func:`lowbit.formats.state_levels`; the ``state`` range token applies the same rule to
a quantizer's data: the clip runs from the ``lower_pct``-th to the ``upper_pct``-th
percentile of the observed values, kept at or below zero and at least
``min_headroom * threshold`` above the threshold.
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..formats import Format
from .estimators import RangeEstimator
from .registry import register_range

__all__ = ["calibrate_state_range", "StateRange"]


def _num(x: object, name: str, *, positive: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    if positive and x <= 0:
        raise ValueError(f"{name} must be > 0, got {x!r}")
    return float(x)


def calibrate_state_range(
    mem: Tensor, threshold: float = 1.0, lower_pct: float = 0.5, upper_pct: float = 99.5, min_headroom: float = 0.05
) -> tuple[float, float]:
    """``(lower_limit, upper_limit)`` covering the observed potentials from ``lower_pct`` to ``upper_pct``.

    The top is kept at least ``min_headroom * threshold`` above the threshold and the
    bottom at or below zero, so the threshold (and rest) stay inside the range.
    """
    if not isinstance(mem, Tensor) or mem.numel() == 0:
        raise ValueError("mem must be a non-empty tensor of observed membrane potentials")
    if not torch.isfinite(mem).all():
        raise ValueError("mem contains NaN or Inf values")
    thr = _num(threshold, "threshold", positive=True)
    if not 0 <= lower_pct < upper_pct <= 100:
        raise ValueError(f"need 0 <= lower_pct < upper_pct <= 100, got {lower_pct}, {upper_pct}")
    flat = mem.detach().flatten().float()
    if flat.numel() > 4_000_000:  # torch.quantile's size limit; a strided subsample is plenty
        flat = flat[:: flat.numel() // 4_000_000 + 1]
    q = torch.quantile(flat, torch.tensor([lower_pct / 100, upper_pct / 100]))
    lo = min(float(q[0]), 0.0)
    hi = max(float(q[1]), thr * (1.0 + min_headroom))
    if lo == 0.0:
        lo = -thr * min_headroom
    return -lo / thr - 1.0, hi / thr - 1.0


class StateRange(RangeEstimator):
    """Range token ``state`` / ``state<threshold>``: the calibrated state interval of :func:`calibrate_state_range`, per row."""

    def __init__(self, threshold: float = 1.0, lower_pct: float = 0.5, upper_pct: float = 99.5) -> None:
        self.threshold = _num(threshold, "threshold", positive=True)
        if not 0 <= lower_pct < upper_pct <= 100:
            raise ValueError(f"need 0 <= lower_pct < upper_pct <= 100, got {lower_pct}, {upper_pct}")
        self.lower_pct, self.upper_pct = float(lower_pct), float(upper_pct)
        self.spec = "state" if self.threshold == 1.0 else f"state{self.threshold:g}"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        thr = self.threshold
        lims = [calibrate_state_range(r, thr, self.lower_pct, self.upper_pct) for r in rows]  # one row per scale: few
        lo = torch.tensor([-thr * (1 + ll) for ll, _ in lims], device=rows.device)
        hi = torch.tensor([thr * (1 + ul) for _, ul in lims], device=rows.device)
        return lo, hi


def _state_range(m: "re.Match[str]") -> StateRange:
    return StateRange(float(m.group("t")) if m.group("t") else 1.0)


register_range(r"state(?P<t>\d*\.?\d+)?", _state_range, "state / state<threshold> (calibrated state range)")
