"""``Uniform``: integer levels, the fast path (round and clamp)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Format, _check_bits, _code_dtype, _refuse_nan, _round_stochastic

__all__ = ["Uniform"]


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
        _refuse_nan(x)  # quantize passes NaN on; a NaN cast to an integer code would be garbage
        return self._codes(self.quantize(x, rounding, generator))

    def encode_(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        _refuse_nan(x)
        return self._codes(self.quantize_(x, rounding, generator))

    def _codes(self, q: Tensor) -> Tensor:
        # q holds integers qmin..qmax and is ours: shift in place, then narrow.
        if self.qmin:
            q = q.sub_(self.qmin)
        return q.to(_code_dtype(self._bits))

    def decode(self, codes: Tensor) -> Tensor:
        return codes.to(torch.float32) + self.qmin

