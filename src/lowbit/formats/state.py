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


def _geometric(lo: float, hi: float, c: float, n: int, m: float) -> list[float]:
    """snnTorch's non-uniform levels, computed in its order: gaps m^j shrinking towards ``c`` from both sides."""
    # a loop in Python floats (at most 2^16 terms, once per quantizer) rather than a closed form:
    # the running sums round exactly as snnTorch's do
    n_lo = math.floor(n * ((c - lo) / (hi - lo)))
    n_hi = n - n_lo
    out: list[float] = []
    if n_lo:  # from lo up, c itself excluded (with upper_limit = 0 the top level lies below the threshold)
        total = 0.0
        for j in reversed(range(n_lo)):
            total += m**j
        room, v = total / (c - lo), lo
        for j in range(n_lo):
            out.append(v)
            v += m**j / room
    if n_hi:  # from c (excluded) up to hi
        total = 0.0
        for j in reversed(range(n_hi)):
            total += m**j
        room, v = total / (hi - c), c
        for j in reversed(range(n_hi)):
            v += m**j / room
            out.append(v)
    return out


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
    or towards zero (``zero``). Levels that coincide in float32 are merged. The
    levels are snnTorch's, bit for bit, for every setting it accepts; the centre
    may be an end of the range (``upper_limit=0``: the threshold is the top, and
    as in snnTorch no level reaches it). A centre outside the range is refused.
    """
    if kind not in STATE_KINDS:
        raise ValueError(f"kind must be one of {STATE_KINDS}, got {kind!r}")
    bits = _int_in("num_bits", num_bits, 1, 16)
    thr, ll, ul = float(threshold), float(lower_limit), float(upper_limit)
    if not (math.isfinite(thr) and thr > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    # snnTorch's own expressions, term for term, so that the float32 levels are bit-identical to its
    lo, hi = -(thr + thr * ll), thr + thr * ul
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lower_limit and upper_limit must give a non-empty range, got [{lo}, {hi}]")
    n = 2 << bits - 1
    if kind == "uniform":
        lv = torch.linspace(lo, hi, n)  # float32, as snnTorch (float64 would round differently)
    else:
        m = _STATE_MULTIPLIER.get(bits, 0.95) if multiplier is None else float(multiplier)
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"multiplier must be a finite number > 0, got {multiplier!r}")
        c = thr if kind == "thr" else 0.0
        if not lo <= c <= hi:
            # snnTorch builds more than 2^num_bits levels, beyond the range, for a centre outside it
            raise ValueError(
                f"the centre of {kind!r} levels ({c:g}) must lie in [{lo:g}, {hi:g}]: "
                + ("upper_limit must be >= 0" if kind == "thr" else "lower_limit must be >= -1")
            )
        lv = torch.tensor(_geometric(lo, hi, c, n, m), dtype=torch.float64)
    lv = torch.unique_consecutive(lv.float())
    spec = _state_spec(kind, bits, thr, ll, ul, multiplier if kind != "uniform" else None)
    return Codebook(lv, name=spec)
