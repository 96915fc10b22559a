"""Number formats: the grid of levels a code can stand for, in units of the scale.

A format knows nothing about tensors' ranges or modules. It maps a *normalised*
value (``x / scale + zero_point``) to a code and back:

- ``encode(x) -> codes``: integer indices into ``levels``, in ``[0, len(levels))``
  (uint8 for formats of up to 8 bits, int32 above).
  These are what gets bit-packed (``bits`` per code).
- ``decode(codes) -> values``: the level values (a table look-up).
- ``quantize(x)``: ``decode(encode(x))``, the fast path used by fake quantization.

Two kinds cover everything: ``Uniform`` (integers, round and clamp) and
``Codebook`` (any sorted set of levels; nearest level by ``bucketize`` on the
midpoints, O(log L) per element and no ``[N, L]`` tensor).

New named formats are added with :func:`register_format`; the spec parser in
:mod:`lowbit.quantizer` looks them up by their first spec token.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Format",
    "Uniform",
    "Codebook",
    "register_format",
    "format_from_spec",
    "format_names",
    "format_examples",
]

_MAX_BITS = 16  # Uniform goes to 16 bits (int16 containers); packing to 8.


def _check_bits(bits: object, *, lo: int = 1, hi: int = _MAX_BITS) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int in {lo}..{hi}, got {bits!r}")
    if not lo <= bits <= hi:
        raise ValueError(f"bits must be in {lo}..{hi}, got {bits}")
    return bits


def _code_dtype(bits: int) -> torch.dtype:
    # The smallest container: codes of <= 8 bits travel as uint8 (what packing
    # and the targets read), wider ones as int32.
    return torch.uint8 if bits <= 8 else torch.int32


def _round_stochastic(x: Tensor, generator: torch.Generator | None) -> Tensor:
    # floor(x + u), u ~ U[0, 1): rounds up with probability frac(x), unbiased.
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.floor(x + u)


class Format:
    """A grid of levels in units of the scale; the base of Uniform and Codebook."""

    #: spec string that rebuilds the format through :func:`format_from_spec`
    spec: str
    #: True when the scale should be symmetric around zero (no zero point)
    symmetric: bool = True

    @property
    def levels(self) -> Tensor:
        """All representable values, sorted ascending (float32)."""
        raise NotImplementedError

    @property
    def bits(self) -> int:
        """Storage bits per code."""
        raise NotImplementedError

    @property
    def lo(self) -> float:
        """Smallest level."""
        return float(self.levels[0])

    @property
    def hi(self) -> float:
        """Largest level."""
        return float(self.levels[-1])

    def encode(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Map normalised values to integer codes in [0, len(levels)) (uint8 up to 8 bits, else int32)."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        """Map codes back to level values (float32)."""
        raise NotImplementedError

    def quantize(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Round normalised values onto the level set: ``decode(encode(x))``."""
        return self.decode(self.encode(x, rounding, generator)).to(x.dtype)

    def quantize_(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Like :meth:`quantize`, but may overwrite ``x`` (a temporary of the caller's) to save a pass."""
        return self.quantize(x, rounding, generator)

    def quantize_clamped(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Like :meth:`quantize`, for ``x`` already clamped to ``[lo, hi]`` (a format may skip its own clamp)."""
        return self.quantize(x, rounding, generator)

    def encode_(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Like :meth:`encode`, but may overwrite ``x`` (a temporary of the caller's)."""
        return self.encode(x, rounding, generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Format)
            and type(other) is type(self)
            and other.spec == self.spec
            and torch.equal(other.levels, self.levels)
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec))


class Uniform(Format):
    """Integer levels ``qmin..qmax``: two's complement when signed, ``0..2^b-1`` when not.

    ``narrow=True`` drops the most negative level (``-2^(b-1)``) so the signed
    grid is symmetric. Unsigned formats use a zero point (affine); signed ones
    are symmetric.
    """

    def __init__(self, bits: int, signed: bool = True, narrow: bool = False) -> None:
        self._bits = _check_bits(bits)
        if narrow and not signed:
            raise ValueError("narrow=True needs signed=True (an unsigned grid is already one-sided)")
        if narrow and bits == 1:
            raise ValueError("narrow=True needs bits >= 2 (a narrow 1-bit grid has a single level)")
        self.signed = bool(signed)
        self.narrow = bool(narrow)
        if signed:
            self.qmin = -(2 ** (bits - 1)) + (1 if narrow else 0)
            self.qmax = 2 ** (bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2**bits - 1
        self.symmetric = self.signed
        self.spec = f"{'int' if signed else 'uint'}{bits}" + ("n" if narrow else "")

    @property
    def levels(self) -> Tensor:
        return torch.arange(self.qmin, self.qmax + 1, dtype=torch.float32)

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def lo(self) -> float:
        return float(self.qmin)

    @property
    def hi(self) -> float:
        return float(self.qmax)

    def quantize(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        # The fast path: round (half to even, as numpy and mlGeNN) and clamp.
        r = torch.round(x) if rounding == "nearest" else _round_stochastic(x, generator)
        return r.clamp_(self.qmin, self.qmax)  # r is ours: clamp in place, one allocation fewer

    def quantize_(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        if rounding != "nearest":
            return self.quantize(x, rounding, generator)
        return x.round_().clamp_(self.qmin, self.qmax)

    def quantize_clamped(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        # The levels are the integers qmin..qmax: rounding a value of [qmin, qmax] stays there.
        return torch.round(x) if rounding == "nearest" else self.quantize(x, rounding, generator)

    def encode(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        return self._codes(self.quantize(x, rounding, generator))

    def encode_(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        return self._codes(self.quantize_(x, rounding, generator))

    def _codes(self, q: Tensor) -> Tensor:
        # q holds integers qmin..qmax and is ours: shift in place, then narrow.
        if self.qmin:
            q = q.sub_(self.qmin)
        return q.to(_code_dtype(self._bits))

    def decode(self, codes: Tensor) -> Tensor:
        return codes.to(torch.float32) + self.qmin


class Codebook(Format):
    """Any sorted set of levels; nearest-level encoding and table decoding.

    Ties (a value exactly on the midpoint of two levels) go to the lower level.
    Storage bits are ``ceil(log2(len(levels)))`` (at least 1).
    """

    def __init__(self, levels: Sequence[float] | Tensor, name: str | None = None) -> None:
        lv = torch.as_tensor(levels, dtype=torch.float32).flatten()
        if lv.numel() < 2:
            raise ValueError(f"levels must hold at least 2 values, got {lv.numel()}")
        if not torch.isfinite(lv).all():
            raise ValueError("levels must be finite")
        if not bool((lv[1:] > lv[:-1]).all()):
            raise ValueError("levels must be strictly increasing (sorted, no duplicates)")
        if lv.numel() > 2**_MAX_BITS:
            raise ValueError(f"levels may hold at most {2**_MAX_BITS} values, got {lv.numel()}")
        self._levels = lv
        gap = lv[1:] - lv[:-1]
        if not torch.isfinite(gap).all():
            raise ValueError("levels must be closer than float32's range (their differences overflow)")
        # a + (b - a) / 2 stays in [a, b) even for adjacent denormals, where
        # (a + b) / 2 can round onto b and send b to the wrong level.
        self._mid = lv[:-1] + gap / 2
        self._bits = max(1, math.ceil(math.log2(lv.numel())))
        self.symmetric = bool(lv[0] < 0)  # one-sided codebooks scale their top only
        self.name = name
        self.spec = name if name is not None else "codebook"

    @property
    def levels(self) -> Tensor:
        return self._levels

    @property
    def bits(self) -> int:
        return self._bits

    def encode(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        mid = self._mid.to(device=x.device, dtype=x.dtype)
        if rounding == "nearest":
            # right=False: x == mid[i] gives index i, the lower level.
            return torch.bucketize(x, mid, out_int32=True).to(_code_dtype(self._bits))
        lv = self._levels.to(device=x.device, dtype=x.dtype)
        # Stochastic: pick between the two neighbouring levels with probability
        # proportional to proximity (unbiased inside the range).
        lower = (torch.bucketize(x, lv, right=True) - 1).clamp(0, lv.numel() - 2)
        a, b = lv[lower], lv[lower + 1]
        p_up = ((x - a) / (b - a)).clamp(0, 1)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (lower + (u < p_up).to(torch.int64)).to(_code_dtype(self._bits))

    def decode(self, codes: Tensor) -> Tensor:
        return self._levels.to(codes.device)[codes.long()]

    def quantize(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        if rounding != "nearest":
            return super().quantize(x, rounding, generator)
        # Index the levels with bucketize's own int64 output: no code container round trip.
        lv = self._levels.to(device=x.device, dtype=x.dtype)
        return lv[torch.bucketize(x, self._mid.to(device=x.device, dtype=x.dtype))]


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Entry:
    pattern: re.Pattern[str]
    factory: Callable[[re.Match[str]], Format]
    defaults: tuple[str, ...]
    help: str
    examples: tuple[str, ...]


_REGISTRY: list[_Entry] = []


def register_format(
    pattern: str,
    factory: Callable[[re.Match[str]], Format],
    *,
    defaults: Sequence[str] = (),
    help: str = "",
    examples: Sequence[str] = (),
) -> None:
    """Register a named format: ``pattern`` (a full-match regex) maps a spec token to a Format.

    ``defaults`` are spec tokens applied unless the user gives their own of the
    same kind (for example NF4's ``group64``). ``examples`` are tokens the
    conformance suite builds; without them, literal patterns and patterns with
    a ``(?P<bits>...)`` group (tried at 1..8 bits) are enumerated.
    """
    _REGISTRY.append(_Entry(re.compile(pattern), factory, tuple(defaults), help or pattern, tuple(examples)))


def _lookup(token: str) -> tuple[Format, tuple[str, ...]] | None:
    for entry in reversed(_REGISTRY):  # later registrations win
        m = entry.pattern.fullmatch(token)
        if m:
            return entry.factory(m), entry.defaults
    return None


def format_from_spec(token: str) -> Format:
    """Build the format named by one spec token (``int4``, ``uint8``, ``int8n``, ...)."""
    found = _lookup(token)
    if found is None:
        raise ValueError(f"unknown format {token!r}; valid formats: {', '.join(format_names())}")
    return found[0]


def format_defaults(token: str) -> tuple[str, ...]:
    """Default spec tokens that come with a named format."""
    found = _lookup(token)
    return found[1] if found else ()


def format_names() -> list[str]:
    """Human-readable list of the registered format patterns."""
    return [e.help for e in _REGISTRY]


def format_examples() -> list[str]:
    """Spec tokens of every registered format that can be built (what the conformance suite checks)."""
    out: list[str] = []
    for e in _REGISTRY:
        cands = list(e.examples)
        pat = e.pattern.pattern
        if not cands and "(?P<bits>" in pat:
            cands = [re.sub(r"\(\?P<bits>[^)]*\)", str(b), pat) for b in range(1, 9)]
        elif not cands and re.fullmatch(r"[A-Za-z0-9_]+", pat):
            cands = [pat]
        for tok in cands:
            if e.pattern.fullmatch(tok) and tok not in out:
                try:
                    e.factory(e.pattern.fullmatch(tok))  # type: ignore[arg-type]
                except ValueError:
                    continue  # e.g. int1n: not a valid member of the family
                out.append(tok)
    return out


def _bits_of(m: re.Match[str]) -> int:
    return _check_bits(int(m.group("bits")))


register_format(r"int(?P<bits>\d+)", lambda m: Uniform(_bits_of(m), True), help="int<b> (b=1..16)")
register_format(r"int(?P<bits>\d+)n", lambda m: Uniform(_bits_of(m), True, narrow=True), help="int<b>n (narrow)")
register_format(r"uint(?P<bits>\d+)", lambda m: Uniform(_bits_of(m), False), help="uint<b>")
# Fixed point Qm.n: signed integers with a power-of-two scale fitted to the
# 99th percentile (mlGeNN's default); the binary point floats with the data.
register_format(r"fxp(?P<bits>\d+)", lambda m: Uniform(_bits_of(m), True), defaults=("pow2", "p99"), help="fxp<b> (fixed point)")
