"""Named level tables, in units of the scale: NF4, minifloats (FP4/FP8), powers of two, APoT, BitNetMCU, DoReFa, sym<N>."""
from __future__ import annotations

from functools import lru_cache, wraps
from typing import Callable, TypeVar

import torch
from torch import Tensor

__all__ = [
    "NF4_LEVELS",
    "nf4_levels",
    "minifloat_levels",
    "pot_levels",
    "apot_levels",
    "fp130_levels",
    "bitsym_levels",
    "dorefa_levels",
    "sym_levels",
]


_F = TypeVar("_F", bound=Callable[..., Tensor])


def _cached(fn: _F) -> _F:
    """Build a level table once; hand out copies so no caller can change the cached one."""
    cached = lru_cache(maxsize=None)(fn)

    @wraps(fn)
    def copy(*args: object, **kwargs: object) -> Tensor:
        return cached(*args, **kwargs).clone()

    return copy  # type: ignore[return-value]


def _int_in(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in {lo}..{hi}, got {value!r}")
    return value


def _symmetric(magnitudes: Tensor) -> Tensor:
    """Sorted ``±magnitudes`` (zero kept once if present)."""
    pos = torch.unique(magnitudes.to(torch.float64))
    neg = -pos[pos > 0].flip(0)
    return torch.cat([neg, pos])


# --------------------------------------------------------------------------- level tables

#: bitsandbytes' NF4 code (index = 4-bit code), for reference and tests.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


@_cached
def nf4_levels() -> Tensor:
    """The 16 NF4 levels built from normal quantiles (8 positive, 7 negative, exact zero, max 1)."""
    # QLoRA: quantiles of N(0, 1) at evenly spaced probabilities from `offset`
    # to 1/2, 2^(k-1) on the negative side and 2^(k-1) + 1 on the positive one.
    offset = 0.9677083
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return (v / v.max()).float()


_SPECIALS = ("none", "nan", "ieee")


@_cached
def minifloat_levels(exp_bits: int, man_bits: int, bias: int, special: str = "none") -> Tensor:
    """Finite values of a sign/exponent/mantissa float (``special``: which top codes are Inf/NaN)."""
    _int_in("exp_bits", exp_bits, 1, 8)
    _int_in("man_bits", man_bits, 0, 10)
    if special not in _SPECIALS:
        raise ValueError(f"special must be one of {_SPECIALS}, got {special!r}")
    e = torch.arange(2**exp_bits, dtype=torch.float64)[:, None]
    m = torch.arange(2**man_bits, dtype=torch.float64)[None, :]
    frac = m / 2**man_bits
    # e == 0 is subnormal: no implicit 1, exponent 1 - bias.
    v = torch.where(e == 0, frac * 2.0 ** (1 - bias), (1 + frac) * 2.0 ** (e - bias))
    keep = torch.ones_like(v, dtype=torch.bool)
    if special == "ieee":  # top exponent is Inf/NaN (E5M2)
        keep[-1, :] = False
    elif special == "nan":  # only the all-ones code is NaN (OCP E4M3)
        keep[-1, -1] = False
    return _symmetric(v[keep]).float()


@_cached
def pot_levels(bits: int) -> Tensor:
    """Sign and powers of two: ``{0, ±2^-k, ..., ±1/2, ±1}`` with ``2^(bits-1) - 1`` magnitudes."""
    _int_in("bits", bits, 2, 8)
    n = 2 ** (bits - 1) - 1
    mags = torch.cat([torch.zeros(1, dtype=torch.float64), 2.0 ** -torch.arange(n, dtype=torch.float64)])
    return _symmetric(mags).float()


@_cached
def fp130_levels() -> Tensor:
    """BitNetMCU FP1.3.0: ``sign * 2^e``, e in 0..7, no zero (16 levels, ±1 .. ±128)."""
    return _symmetric(2.0 ** torch.arange(8, dtype=torch.float64)).float()


# Additive terms of the APoT reference (Li et al. 2020) per magnitude bit width B:
# a level is one term from each set, summed, then all normalised to max 1.
_APOT_TERMS = {
    2: ((0.0, 2**-1, 2**-2, 2**-3),),
    3: ((0.0, 2**-1, 2**-2, 2**-4), (0.0, 2**-3)),
    4: ((0.0, 2**-1, 2**-3, 2**-5), (0.0, 2**-2, 2**-4, 2**-6)),
}


@_cached
def apot_levels(bits: int, signed: bool = True) -> Tensor:
    """Additive powers of two: magnitudes from the APoT table of ``bits - 1`` (signed) or ``bits`` bits."""
    allowed = (3, 4, 5) if signed else (2, 3, 4)
    if bits not in allowed:
        raise ValueError(f"bits must be one of {allowed} for {'signed' if signed else 'unsigned'} APoT, got {bits!r}")
    terms = _APOT_TERMS[bits - 1 if signed else bits]
    sums = torch.zeros(1, dtype=torch.float64)
    for t in terms:  # at most two small sets: an outer sum, not a loop over elements
        sums = (sums[:, None] + torch.tensor(t, dtype=torch.float64)[None, :]).reshape(-1)
    mags = torch.unique(sums) / sums.max()
    return (_symmetric(mags) if signed else mags).float()


@_cached
def bitsym_levels(bits: int) -> Tensor:
    """BitNetMCU ``<b>bitsym``: ``k + 0.5`` for k in ``-2^(b-1) .. 2^(b-1) - 1`` (no zero)."""
    _int_in("bits", bits, 1, 8)
    h = 2 ** (bits - 1)
    return torch.arange(-h, h, dtype=torch.float32) + 0.5


@_cached
def dorefa_levels(bits: int) -> Tensor:
    """DoReFa weight levels: ``2j / (2^k - 1) - 1`` for j in ``0 .. 2^k - 1`` (odd multiples of 1/(2^k-1))."""
    _int_in("bits", bits, 1, 8)
    n = 2**bits - 1
    return (2 * torch.arange(n + 1, dtype=torch.float64) / n - 1).float()



def sym_levels(n: int) -> Tensor:
    """The ``n`` (odd) integer levels ``-Q..Q``, ``Q = (n - 1) / 2``: the operands of the 4.6-bit pairs."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 3 or n > 255 or n % 2 == 0:
        raise ValueError(f"the number of levels must be an odd int in 3..255, got {n!r}")
    q = (n - 1) // 2
    return torch.arange(-q, q + 1, dtype=torch.float32)
