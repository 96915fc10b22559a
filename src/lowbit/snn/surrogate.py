"""Surrogate gradients: a Heaviside step forward, a smooth derivative backward.

``spike = fast_sigmoid(slope=25)`` gives a callable ``spike(v - threshold)``
that returns 0/1 spikes (``x > 0``, as snnTorch and NIR) and, backward, the
derivative of a smooth stand-in:

- fast sigmoid (Zenke & Ganguli's SuperSpike): ``1 / (slope * |x| + 1)^2``;
- arctan (snnTorch's default ``atan``): ``(slope / 2) / (1 + (pi/2 * slope * x)^2)``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["Surrogate", "fast_sigmoid", "atan", "surrogate", "SURROGATES"]


class _Heaviside(torch.autograd.Function):
    """Forward: the spike ``x > 0``; subclasses give the surrogate derivative in ``backward``."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)


class _FastSigmoid(_Heaviside):
    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad / (ctx.slope * x.abs() + 1.0) ** 2, None


class _ATan(_Heaviside):
    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        a = ctx.slope
        return grad * (a / 2.0) / (1.0 + (math.pi / 2.0 * a * x) ** 2), None


class Surrogate:
    """A spike function ``x -> (x > 0)`` whose gradient is a named smooth surrogate."""

    def __init__(self, kind: str, slope: float) -> None:
        if kind not in SURROGATES:
            raise ValueError(f"surrogate kind must be one of {sorted(SURROGATES)}, got {kind!r}")
        if not (isinstance(slope, (int, float)) and math.isfinite(slope) and slope > 0):
            raise ValueError(f"slope must be a positive finite number, got {slope!r}")
        self.kind = kind
        self.slope = float(slope)
        self._fn = SURROGATES[kind]

    def __call__(self, x: Tensor) -> Tensor:
        """Spikes (0/1, same dtype as ``x``) with the surrogate gradient."""
        return self._fn.apply(x, self.slope)

    def grad(self, x: Tensor) -> Tensor:
        """The surrogate derivative at ``x`` (what backward multiplies by)."""
        if self.kind == "fast_sigmoid":
            return 1.0 / (self.slope * x.abs() + 1.0) ** 2
        return (self.slope / 2.0) / (1.0 + (math.pi / 2.0 * self.slope * x) ** 2)

    def __repr__(self) -> str:
        return f"{self.kind}(slope={self.slope:g})"


SURROGATES: dict[str, type[torch.autograd.Function]] = {"fast_sigmoid": _FastSigmoid, "atan": _ATan}


def fast_sigmoid(slope: float = 25.0) -> Surrogate:
    """Heaviside spike with the fast-sigmoid surrogate gradient ``1/(slope|x|+1)^2``."""
    return Surrogate("fast_sigmoid", slope)


def atan(slope: float = 2.0) -> Surrogate:
    """Heaviside spike with the arctan surrogate gradient ``(slope/2)/(1+(pi/2 slope x)^2)``."""
    return Surrogate("atan", slope)


def surrogate(spec: str | Surrogate | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A spike function from ``'fast_sigmoid'``, ``'atan'``, ``'atan:5'`` (kind:slope) or a callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"surrogate must be a string such as 'fast_sigmoid:25' or a callable, got {spec!r}")
    kind, _, slope = spec.partition(":")
    if kind not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)} (optionally ':slope'), got {spec!r}")
    if not slope:
        return fast_sigmoid() if kind == "fast_sigmoid" else atan()
    try:
        s = float(slope)
    except ValueError:
        raise ValueError(f"surrogate slope in {spec!r} must be a number") from None
    return Surrogate(kind, s)
