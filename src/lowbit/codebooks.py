"""Named codebooks and the ranges that go with them (registered at import time).

Formats (spec tokens; levels in units of the scale unless said otherwise):

- ``nf4`` -- the 16 NormalFloat4 values (QLoRA), blocks of 64 with absmax scales by
  default; :func:`double_quantize` compresses the block scales (8 bit, blocks of 256).
- ``fp4`` (OCP E2M1), ``fp8_e4m3``, ``fp8_e5m2`` -- finite values only, saturating;
  ``mxfp4`` / ``mxfp8_e4m3`` / ``mxfp8_e5m2`` add the OCP MX block-32 power-of-two scales.
- ``pot<b>`` -- sign and powers of two with zero; ``fp130`` -- sign * 2^e, e in 0..7, no zero;
  ``apot<b>`` / ``uapot<b>`` -- additive powers of two (APoT), signed / unsigned.
- BitNetMCU: ``binary`` (sign around the mean), ``binarysym``, ``ternary``, ``<b>bitsym``
  (levels k + 0.5, no zero), ``4bit`` / ``8bit`` (two's complement).
- ``dorefa<k>`` -- DoReFa weights (tanh normalisation to [-1, 1], no exact zero).
- ``state_uniform<b>``, ``state_thr<b>``, ``state_zero<b>`` -- spiking-neuron state levels
  (snnTorch SQUAT), absolute (scale 1, the ``fixed`` range).
- ``sym<N>`` -- N (odd) integer levels -Q..Q, the operands of the 4.6-bit pairs.

Ranges: ``octav`` (BitNetMCU/OCTAV clipping), ``prop`` / ``prop<q>`` (mean|w| / q),
``absmean`` (scale = mean|w|), ``fixed`` (scale 1: the levels are absolute), ``mx`` (OCP MX scale).

Two formats need more than scale-and-round: ``binary`` subtracts the per-slice mean and
``dorefa<k>`` applies tanh; `lowbit.quantizer(spec)` builds the quantizer classes that do
that (:class:`CenteredQuantizer`, :class:`DoReFaQuantizer`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

from .formats import Codebook, Format, Uniform, register_format
from .qtensor import QTensor
from .quantizer import Quantizer, quantizer, register_quantizer
from .ranges import RangeEstimator, register_range

__all__ = [
    "NF4_LEVELS",
    "nf4_levels",
    "minifloat_levels",
    "pot_levels",
    "apot_levels",
    "fp130_levels",
    "bitsym_levels",
    "dorefa_levels",
    "state_levels",
    "state_quantizer",
    "CenteredCodebook",
    "DoReFaCodebook",
    "LearnedCodebook",
    "CenteredQuantizer",
    "DoReFaQuantizer",
    "build_quantizer",
    "Octav",
    "Prop",
    "AbsMean",
    "Fixed",
    "MXScale",
    "DoubleQuantScales",
    "double_quantize_scales",
    "double_quantize",
    "bits_per_param",
    "FourSixPair",
    "pair46",
    "product_table",
    "lut_dot",
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


# --------------------------------------------------------------------------- codebook kinds


class CenteredCodebook(Codebook):
    """A codebook whose quantizer subtracts each slice's mean first (BitNetMCU ``binary``).

    The mean only moves the decision threshold: it is not added back, so the
    codes and scale alone rebuild the values.
    """


class DoReFaCodebook(Codebook):
    """DoReFa levels; :class:`DoReFaQuantizer` maps weights onto them through tanh."""

    def __init__(self, bits: int) -> None:
        super().__init__(dorefa_levels(bits), name=f"dorefa{bits}")
        self.dorefa_bits = bits


class LearnedCodebook(Codebook):
    """Levels found from data (weight sharing); one instance may be shared by many tensors.

    Weight-sharing algorithms refill it with :meth:`set_levels`; every quantizer
    holding the instance sees the new levels. Files store the levels, so a
    QTensor with a learned codebook loads back exactly (as a ``Codebook``).
    """

    def __init__(self, levels: Sequence[float] | Tensor, name: str = "learned") -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"name must be lower-case letters, digits and '_', got {name!r}")
        super().__init__(self._clean(levels), name=name)

    @staticmethod
    def _clean(levels: Sequence[float] | Tensor) -> Tensor:
        # Centroids come unsorted and may coincide: sort and merge them.
        return torch.unique(torch.as_tensor(levels, dtype=torch.float32).flatten())

    def set_levels(self, levels: Sequence[float] | Tensor) -> None:
        """Replace the levels (sorted and de-duplicated); the storage bits follow the new count."""
        fresh = Codebook(self._clean(levels), name=self.name)
        self._levels, self._mid, self._bits, self.symmetric = fresh._levels, fresh._mid, fresh._bits, fresh.symmetric


# --------------------------------------------------------------------------- state levels (SQUAT)

_STATE_KINDS = ("uniform", "thr", "zero")
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
    if kind not in _STATE_KINDS:
        raise ValueError(f"kind must be one of {_STATE_KINDS}, got {kind!r}")
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


def state_quantizer(
    kind: str,
    num_bits: int,
    threshold: float = 1.0,
    lower_limit: float = 0.0,
    upper_limit: float = 0.2,
    multiplier: float | None = None,
) -> Quantizer:
    """A ready-to-call state quantizer: nearest absolute level, scale 1 frozen, straight-through gradient.

    A plain :class:`Quantizer` (encodes to QTensors, saves with a model). Inside neurons' time loops
    prefer :func:`lowbit.snn.state_quantizer`: the same levels and rounding through an exact look-up
    table, cheaper per step, and it counts clipped states.
    """
    fmt = state_levels(kind, num_bits, threshold, lower_limit, upper_limit, multiplier)
    return Quantizer(fmt, Fixed()).fit(fmt.levels)


# --------------------------------------------------------------------------- ranges


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


# --------------------------------------------------------------------------- quantizers that need more


class CenteredQuantizer(Quantizer):
    """Quantizes ``w - mean(w)`` per slice and does not add the mean back: BitNetMCU ``binary``.

    The mean moves the decision threshold (``sign(w - mean)``); the scale is
    fitted to the centred data. Everything else is :class:`Quantizer`.
    """

    def _rows(self, x: Tensor) -> Tensor:
        rows = super()._rows(x)
        return rows - rows.mean(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x - mean`` per slice; straight-through gradient to ``x``."""
        scale, _ = self.compute_scale(x)
        rows = self.granularity.to_rows(x)
        xc = rows.detach() - rows.detach().mean(dim=1, keepdim=True)
        s = scale.to(rows.dtype)[:, None]
        q = self.fmt.quantize(xc / s, self.rounding, self.generator) * s
        # q + (x - x.detach()) keeps the values exactly on the grid (x + (q - x) would not).
        out = q + (rows - rows.detach()) if rows.requires_grad else q
        return self.granularity.from_rows(out, x.shape)


class DoReFaQuantizer(Quantizer):
    """DoReFa weights: ``t = tanh(w) / max|tanh(w)|`` per slice, then the nearest of 2^k levels in [-1, 1].

    The output is in DoReFa's units ([-1, 1]), not the weight's; the gradient
    flows through tanh and the normalisation (straight-through on rounding only).
    Its QTensor has scale 1, so ``dequantize()`` equals ``q(w)``.
    """

    def _normalise(self, x: Tensor) -> Tensor:
        rows = self.granularity.to_rows(x)
        if not torch.isfinite(rows.detach()).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        t = torch.tanh(rows)
        # The max stays in the graph: DoReFa differentiates through the normalisation too.
        return t / t.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)

    def compute_scale(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Always 1 per slice: DoReFa's levels are its output."""
        return torch.ones(self.granularity.n_slices(x.shape), device=x.device), None

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize through tanh; straight-through on the rounding only."""
        t = self._normalise(x)
        q = self.fmt.quantize(t.detach(), self.rounding, self.generator)
        out = q + (t - t.detach()) if t.requires_grad else q
        return self.granularity.from_rows(out, x.shape)

    def encode(self, x: Tensor) -> QTensor:
        """Codes ``j`` of the levels ``2j/(2^k-1) - 1`` with scale 1."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
            raise ValueError("x must be a non-empty floating-point tensor")
        t = self._normalise(x.detach().float())
        codes = self.fmt.encode(t, self.rounding, self.generator)
        return QTensor.from_codes(codes, self.compute_scale(x)[0], None, self.fmt, self.granularity, x.shape)


register_quantizer(CenteredCodebook, CenteredQuantizer)
register_quantizer(DoReFaCodebook, DoReFaQuantizer)


def build_quantizer(spec: str, *, generator: torch.Generator | None = None) -> Quantizer:
    """The same as :func:`lowbit.quantizer` (kept as an alias: the core now picks the class a format needs)."""
    return quantizer(spec, generator=generator)


# --------------------------------------------------------------------------- double quantization (NF4)


@dataclass(frozen=True)
class DoubleQuantScales:
    """Block scales stored as int8 (``q``), one fp32 step per block of scales, and their fp32 mean."""

    q: Tensor
    step: Tensor
    mean: Tensor
    block: int

    def dequantize(self) -> Tensor:
        """The fp32 scales: ``q * step[block] + mean``."""
        n = self.q.numel()
        step = self.step.repeat_interleave(self.block)[:n]
        return self.q.float() * step + self.mean

    @property
    def nbits(self) -> int:
        """Storage bits: 8 per scale, 32 per block step, 32 for the mean."""
        return 8 * self.q.numel() + 32 * self.step.numel() + 32


def double_quantize_scales(scales: Tensor, block: int = 256) -> DoubleQuantScales:
    """Quantize scales to int8 after subtracting their mean, with a symmetric absmax step per ``block``."""
    _int_in("block", block, 1, 2**20)
    s = scales.detach().reshape(-1).float()
    if s.numel() == 0 or not torch.isfinite(s).all():
        raise ValueError("scales must be a non-empty finite tensor")
    mean = s.mean()
    c = s - mean
    n = c.numel()
    padded = torch.nn.functional.pad(c, (0, (-n) % block)).reshape(-1, block)
    amax = padded.abs().amax(dim=1)
    step = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(padded / step[:, None]).clamp(-127, 127).to(torch.int8).reshape(-1)[:n]
    return DoubleQuantScales(q, step, mean, block)


def double_quantize(qt: QTensor, block: int = 256) -> tuple[QTensor, DoubleQuantScales]:
    """QLoRA double quantization: the same codes, with scales replaced by their 8-bit reconstruction."""
    if qt.zero_point is not None:
        raise ValueError("double quantization needs a symmetric QTensor (no zero points)")
    dq = double_quantize_scales(qt.scale, block)
    return QTensor(qt.data, dq.dequantize(), None, qt.fmt, qt.granularity, qt.shape), dq


def bits_per_param(
    qt: QTensor, dq: DoubleQuantScales | None = None, *, trits: bool = False, scale_bits: int = 32
) -> float:
    """Storage bits per value: packed codes plus scales (``scale_bits`` each, or ``dq``) and zero points.

    ``trits=True`` counts a 3-level format packed 5 codes per byte (base 3);
    ``scale_bits=8`` counts power-of-two scales stored as an 8-bit exponent (MX's E8M0).
    """
    if trits and qt.fmt.levels.numel() > 3:
        raise ValueError(f"trits=True needs a format of at most 3 levels, {qt.fmt.spec!r} has {qt.fmt.levels.numel()}")
    _int_in("scale_bits", scale_bits, 1, 64)
    if scale_bits < 32 and dq is None and not torch.equal(qt.scale, torch.exp2(torch.log2(qt.scale).round())):
        raise ValueError(f"scale_bits={scale_bits} needs power-of-two scales (pow2); use 32 for float scales")
    code_bits = 8 * ((qt.numel + 4) // 5) if trits else 8 * qt.data.numel()
    zp_bits = 0 if qt.zero_point is None else 32 * qt.zero_point.numel()
    s_bits = dq.nbits if dq is not None else scale_bits * qt.scale.numel()
    return (code_bits + s_bits + zp_bits) / qt.numel


# --------------------------------------------------------------------------- 4.6-bit pairs


def _sym_levels(n: int) -> Tensor:
    if isinstance(n, bool) or not isinstance(n, int) or n < 3 or n > 255 or n % 2 == 0:
        raise ValueError(f"the number of levels must be an odd int in 3..255, got {n!r}")
    q = (n - 1) // 2
    return torch.arange(-q, q + 1, dtype=torch.float32)


@dataclass(frozen=True)
class FourSixPair:
    """A 4.6-bit pair: ``nx`` activation levels and ``nw`` weight levels whose products fit in int8."""

    nx: int
    nw: int

    @property
    def x_format(self) -> Codebook:
        """Integer activation levels ``-Qx..Qx``."""
        return Codebook(_sym_levels(self.nx), name=f"sym{self.nx}")

    @property
    def w_format(self) -> Codebook:
        """Integer weight levels ``-Qw..Qw``."""
        return Codebook(_sym_levels(self.nw), name=f"sym{self.nw}")

    @property
    def bits(self) -> float:
        """Effective bits per operand: ``log2(nx * nw) / 2``."""
        return math.log2(self.nx * self.nw) / 2

    def table(self) -> Tensor:
        """The int8 product table ``[nx, nw]`` indexed by (activation code, weight code)."""
        return product_table(self.nx, self.nw)


def pair46(nw: int) -> FourSixPair:
    """The pair for ``nw`` (odd) weight levels: ``nx = 2 floor(127 / floor(nw / 2)) + 1`` (e.g. 3 -> 255, 17 -> 31)."""
    _sym_levels(nw)
    return FourSixPair(2 * (127 // (nw // 2)) + 1, nw)


def product_table(nx: int, nw: int) -> Tensor:
    """All ``nx * nw`` products of the integer levels as int8, indexed by the two codes."""
    x, w = _sym_levels(nx), _sym_levels(nw)
    if x[-1] * w[-1] > 127:
        raise ValueError(f"nx={nx}, nw={nw}: the largest product {int(x[-1] * w[-1])} does not fit in int8 (max 127)")
    return (x[:, None] * w[None, :]).to(torch.int8)


def lut_dot(x_codes: Tensor, w_codes: Tensor, table: Tensor) -> Tensor:
    """Dot products over the last axis through the product table (int32; broadcasts like ``(x * w).sum(-1)``)."""
    if x_codes.is_floating_point() or w_codes.is_floating_point():
        raise TypeError("x_codes and w_codes must be integer code tensors")
    if table.dim() != 2:
        raise ValueError(f"table must be 2-D [nx, nw], got shape {tuple(table.shape)}")
    x, w = torch.broadcast_tensors(x_codes.long(), w_codes.long())
    flat = table.reshape(-1).to(torch.int32)
    return flat[x * table.shape[1] + w].sum(dim=-1, dtype=torch.int32)


# --------------------------------------------------------------------------- registration


def _bits(m: re.Match[str]) -> int:
    return int(m.group("bits"))


def _check(name: str, value: int, allowed: Sequence[int]) -> int:
    if value not in allowed:
        raise ValueError(f"{name} needs bits in {allowed[0]}..{allowed[-1]}, got {value}")
    return value


_Factory = Callable[[re.Match[str]], Codebook]


def _fixed(name: str, levels: Sequence[float] | Tensor, cls: type[Codebook] = Codebook) -> _Factory:
    table = torch.as_tensor(levels, dtype=torch.float32)
    return lambda m: cls(table.clone(), name=name)  # type: ignore[call-arg]


def _family(prefix: str, levels_of: Callable[[int], Tensor]) -> _Factory:
    return lambda m: Codebook(levels_of(_bits(m)), name=f"{prefix}{_bits(m)}")


def _bitsym(m: re.Match[str]) -> Codebook:
    bits = _check("<b>bitsym", _bits(m), range(2, 9))
    cb = Codebook(bitsym_levels(bits), name=f"{bits}bitsym")
    cb.clip_edge = float(2 ** (bits - 1))  # type: ignore[attr-defined]  # the clip is the edge of the top bin
    return cb


def _state(m: re.Match[str]) -> Codebook:
    def num(tag: str, default: float) -> float:
        return default if m.group(tag) is None else float(m.group(tag))

    mult = None if m.group("m") is None else float(m.group("m"))
    return state_levels(m.group("kind"), _bits(m), num("t", 1.0), num("l", 0.0), num("u", 0.2), mult)


_MINIFLOATS = {"fp4": (2, 1, 1, "none"), "fp8_e4m3": (4, 3, 7, "nan"), "fp8_e5m2": (5, 2, 15, "ieee")}
for _name, _args in _MINIFLOATS.items():
    register_format(_name, _fixed(_name, minifloat_levels(*_args)), help=_name)
    register_format(f"mx{_name}", _fixed(f"mx{_name}", minifloat_levels(*_args)), defaults=("group32", "mx"),
                    help=f"mx{_name} (block 32, OCP MX scales)")  # fmt: skip
register_format("nf4", _fixed("nf4", nf4_levels()), defaults=("group64",), help="nf4 (group64 absmax)")
register_format(r"pot(?P<bits>\d+)", _family("pot", pot_levels), help="pot<b> (b=2..8)")
register_format("fp130", _fixed("fp130", fp130_levels()), defaults=("octav",), help="fp130")
register_format(r"apot(?P<bits>\d+)", _family("apot", apot_levels), help="apot<b> (b=3..5)")
register_format(r"uapot(?P<bits>\d+)", _family("uapot", lambda b: apot_levels(b, False)), help="uapot<b> (b=2..4)")
register_format("binary", _fixed("binary", [-1.0, 1.0], CenteredCodebook), defaults=("absmean",), help="binary")
register_format("binarysym", _fixed("binarysym", [-1.0, 1.0]), defaults=("absmean",), help="binarysym")
register_format("ternary", _fixed("ternary", [-1.0, 0.0, 1.0]), defaults=("absmean",), help="ternary")
register_format(r"(?P<bits>\d)bitsym", _bitsym, defaults=("octav",), help="<b>bitsym (b=2..8)")
register_format("4bit", lambda m: Uniform(4), defaults=("octav",), help="4bit (int4, octav)")
register_format("8bit", lambda m: Uniform(8), defaults=("octav",), help="8bit (int8, octav)")
register_format(r"dorefa(?P<bits>\d+)", lambda m: DoReFaCodebook(_check("dorefa<k>", _bits(m), range(1, 9))),
                help="dorefa<k> (k=1..8)")  # fmt: skip
register_format(r"sym(?P<n>\d+)", lambda m: Codebook(_sym_levels(int(m.group("n"))), name=f"sym{int(m.group('n'))}"),
                help="sym<N> (odd N=3..255)", examples=("sym3", "sym17", "sym31", "sym255"))  # fmt: skip
_NUM = r"[-+0-9.e]+"
register_format(
    rf"state_(?P<kind>uniform|thr|zero)(?P<bits>\d+)"
    rf"(?:_t(?P<t>{_NUM}))?(?:_l(?P<l>{_NUM}))?(?:_u(?P<u>{_NUM}))?(?:_m(?P<m>{_NUM}))?",
    _state,
    defaults=("fixed",),
    help="state_uniform<b> / state_thr<b> / state_zero<b> [_t<thr>][_l<lower>][_u<upper>][_m<mult>]",
    examples=("state_uniform2", "state_uniform4", "state_thr2", "state_thr4", "state_zero4",
              "state_thr3_t0.5_l0.1_u0.5_m0.3"),
)  # fmt: skip


#: weight spec of layers whose levels were learned (weight sharing); the real
#: levels travel with each QTensor, so this placeholder only has to parse when a
#: saved model is rebuilt (``lowbit.load``) -- in any process, with no extra import.
SHARED_SPEC = "shared"
register_format(
    SHARED_SPEC,
    lambda m: LearnedCodebook([-1.0, 1.0], name=SHARED_SPEC),
    defaults=("fixed",),
    help="shared (learned weight-sharing codebook; levels stored with each tensor)",
)
