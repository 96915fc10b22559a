"""Spiking-neuron state levels (snnTorch SQUAT): uniform, threshold- or zero-centred, absolute (scale 1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .codebook import Codebook
from .levels import _int_in

__all__ = ["STATE_KINDS", "state_levels"]

STATE_KINDS = ("uniform", "thr", "zero")
# snnTorch's default multiplier per bit width (>= 8 bits: 0.95).
_STATE_MULTIPLIER = {1: 0.05, 2: 0.1, 3: 0.3, 4: 0.5, 5: 0.7, 6: 0.9, 7: 0.925}


def _state_spec(kind: str, bits: int, threshold: float, lower: float, upper: float, m: float | None) -> str:
    s = f"state_{kind}{bits}"
    for tag, v, default in (("t", threshold, 1.0), ("l", lower, 0.0), ("u", upper, 0.2)):
        if v != default:
            s += f"_{tag}{v!r}"
    if m is not None and kind != "uniform":
        s += f"_m{m!r}"
    return s


def state_levels(
    kind: str,
    num_bits: int,
    threshold: float = 1.0,
    lower_limit: float = 0.0,
    upper_limit: float = 0.2,
    multiplier: float | None = None,
) -> Codebook:
    """Absolute membrane-state levels of snnTorch's ``state_quant`` (kind: uniform, thr or zero).

    The range is ``[-threshold (1 + lower_limit), threshold (1 + upper_limit)]``
    with ``2^num_bits`` levels: evenly spaced (``uniform``), or with gaps that
    shrink geometrically (ratio ``multiplier``) towards the threshold (``thr``)
    or towards zero (``zero``). Levels that coincide in float32 are merged.
    """
    if kind not in STATE_KINDS:
        raise ValueError(f"kind must be one of {STATE_KINDS}, got {kind!r}")
    bits = _int_in("num_bits", num_bits, 1, 16)
    thr, ll, ul = float(threshold), float(lower_limit), float(upper_limit)
    if not (math.isfinite(thr) and thr > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    lo, hi = -thr * (1 + ll), thr * (1 + ul)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lower_limit and upper_limit must give a non-empty range, got [{lo}, {hi}]")
    n = 2**bits
    if kind == "uniform":
        lv = torch.linspace(lo, hi, n, dtype=torch.float64)
    else:
        m = _STATE_MULTIPLIER.get(bits, 0.95) if multiplier is None else float(multiplier)
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"multiplier must be a finite number > 0, got {multiplier!r}")
        c = thr if kind == "thr" else 0.0
        n_lo = math.floor(n * (c - lo) / (hi - lo))
        n_hi = n - n_lo
        if not (lo < c < hi) or n_lo < 1 or n_hi < 1:
            raise ValueError(
                f"the centre {c} must lie inside [{lo}, {hi}] with levels on both sides; "
                "check threshold, lower_limit and upper_limit"
            )

        def partial(k: int) -> Tensor:  # [0, 1, 1 + m, 1 + m + m^2, ...], k + 1 entries
            powers = m ** torch.arange(k, dtype=torch.float64)
            return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(powers, 0)])

        below = partial(n_lo)  # gaps m^0, m^1, ... from lo towards c (c itself excluded)
        below_lv = lo + below[:-1] * (c - lo) / below[-1]
        above = partial(n_hi)  # gaps m^(n_hi - 1), ..., m^0 from c up to hi (c excluded)
        above_lv = c + (above[-1] - above.flip(0)[1:]) * (hi - c) / above[-1]
        lv = torch.cat([below_lv, above_lv])
    lv = torch.unique_consecutive(lv.float())
    spec = _state_spec(kind, bits, thr, ll, ul, multiplier if kind != "uniform" else None)
    return Codebook(lv, name=spec)
