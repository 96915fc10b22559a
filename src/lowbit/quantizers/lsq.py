"""LSQ: a quantizer whose step size is learned (Esser et al., ICLR 2020).

``scale`` is an ``nn.Parameter``; its gradient is scaled by ``1/sqrt(N*Qp)``
(``N`` = values sharing one step size, ``Qp`` = the top level), and it starts
at ``2*mean|v|/sqrt(Qp)`` (from the weights at construction, or from the first
batch it sees). The range token ``lsq`` (or ``lsq.<range>``) selects it:
``lowbit.quantizer("int4:lsq")`` and a QAT layer's ``w4:lsq`` build the same class.

Unsigned formats have no zero point here: as in the paper they assume
non-negative inputs (post-ReLU activations).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..formats import Format, Uniform
from ..ranges import Granularity, LSQInit, RangeEstimator, lsq_init_scale, scale_from_range
from ..ranges.learned import _qp
from .base import Quantizer

__all__ = ["LSQQuantizer", "round_ste"]


class _Layout:
    """How an LSQ quantizer's step sizes meet inputs of one shape.

    Worked out once per shape and cached on the quantizer: QAT quantizes every
    weight at every step, and on a small layer the Python work per call weighs
    as much as the arithmetic. Steps along axis 0 (a weight's output channels)
    broadcast over ``x`` itself, with no reshapes; other granularities use the
    ``[n_steps, n]`` row view.
    """

    __slots__ = ("shape", "gran", "fmt", "rows", "n", "view", "dims", "per", "fixed", "lo", "hi", "g")

    def __init__(self, shape: torch.Size, gran: Granularity, fmt: Format) -> None:
        self.shape, self.gran, self.fmt = shape, gran, fmt
        self.rows = not (gran.kind == "channel" and len(shape) > 1 and gran.axis in (0, -len(shape)))
        self.n = gran.n_slices(shape)  # step sizes x needs (checks the granularity fits)
        ndim = 2 if self.rows else len(shape)
        self.view = (-1,) + (1,) * (ndim - 1)  # the steps' shape, to broadcast over the rows
        self.dims = tuple(range(1, ndim))  # the row sum for the steps' gradient
        # LSQ's N: values per step size (an empty x needs no steps: steps() then names the mismatch)
        self.per = math.prod(shape) // self.n if self.n else 0
        # A Uniform grid never changes; other formats may get new levels (LearnedCodebook.set_levels).
        self.fixed = isinstance(fmt, Uniform)
        self.lo, self.hi, self.g = self._limits()

    def _limits(self) -> tuple[float, float, float]:
        fmt = self.fmt
        return fmt.lo, fmt.hi, (1.0 / math.sqrt(self.per * _qp(fmt)) if self.per else 0.0)

    def limits(self) -> tuple[float, float, float]:
        """The format's ``lo``, ``hi`` and LSQ's gradient scale ``g = 1/sqrt(N*Qp)``."""
        return (self.lo, self.hi, self.g) if self.fixed else self._limits()

    def steps(self, s: Tensor, v: Tensor) -> Tensor:
        """``s`` shaped to broadcast over ``v`` (one step per row, or one for all)."""
        if s.shape[0] != self.n and s.shape[0] != 1:
            raise ValueError(f"this LSQ quantizer has {s.shape[0]} step sizes but x needs {self.n}")
        return (s if s.dtype == v.dtype else s.to(v.dtype)).view(self.view)


class _LSQ(torch.autograd.Function):
    """Fused LSQ fake quantization: one autograd node per call.

    Forward ``q(clamp(v/s)) * s``; backward: straight through inside the range,
    ``d/ds = (q - v/s)`` inside and ``q`` (the clip level) outside, times
    ``g = 1/sqrt(N*Qp)`` (``N`` = values per step size).

    Built for the QAT step time, where a layer's weight is small and every call
    counts (in a training step they also run with cold caches, between
    convolutions): it takes ``x`` in its own shape and makes any row view itself
    (no autograd nodes for reshapes), and the forward pass saves what the
    backward pass needs, ready to use: the in-range mask (0/1 in ``x``'s dtype)
    for the straight-through gradient and ``q - v/s * mask`` for the step's. The
    backward pass is then two products and a row sum.
    """

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor, lsq: "LSQQuantizer") -> Tensor:  # type: ignore[override]
        lay = lsq._layout(x)
        lo, hi, ctx.g = lay.limits()
        v = lay.gran.to_rows(x) if lay.rows else x
        sc = lay.steps(s, v)
        xn = v / sc
        c = torch.clamp(xn, lo, hi)
        q = lay.fmt.quantize_clamped(c, lsq.rounding, lsq.generator)
        # The mask lo <= xn <= hi (NaN: outside) in one pass, into c's memory (c is
        # done with, unless q is c): eq straight into a float tensor is several times
        # faster on CPU than a bool mask and its casts.
        inside = torch.eq(c, xn, out=c if q.data_ptr() != c.data_ptr() else torch.empty_like(c))
        r = None
        if ctx.needs_input_grad[1]:
            # q - xn * inside in one pass (xn * 0/1 is exact), into xn: no longer needed
            r = torch.addcmul(q, xn, inside, value=-1, out=xn)
        ctx.save_for_backward(inside if ctx.needs_input_grad[0] else None, r)
        ctx.lay = lay
        out = q * sc
        return lay.gran.from_rows(out, x.shape) if lay.rows else out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        inside, r = ctx.saved_tensors
        lay = ctx.lay
        v = lay.gran.to_rows(grad) if lay.rows else grad
        grad_x = grad_s = None
        if inside is not None:
            grad_x = lay.gran.from_rows(v * inside, lay.shape) if lay.rows else v * inside
        if r is not None:
            grad_s = (v * r).sum(dim=lay.dims).mul_(ctx.g)  # the sum is ours: scale it in place
        return grad_x, grad_s, None


class _RoundSTE(torch.autograd.Function):
    """Forward: the format's rounding; backward: identity (straight through)."""

    @staticmethod
    def forward(ctx, x: Tensor, fmt: Format, rounding: str, generator: torch.Generator | None) -> Tensor:  # type: ignore[override]
        return fmt.quantize(x, rounding, generator)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None, None, None


def round_ste(x: Tensor, fmt: Format, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
    """Round onto ``fmt``'s levels with a straight-through gradient."""
    return _RoundSTE.apply(x, fmt, rounding, generator)


class LSQQuantizer(Quantizer):
    """A Quantizer whose per-slice ``scale`` is a learned ``nn.Parameter`` (LSQ)."""

    _lay: "_Layout | None" = None  # see _layout (a class default: objects unpickled from older versions lack it)

    def __init__(
        self,
        fmt: Format | str,
        granularity: Granularity | str = "tensor",
        *,
        init: Tensor | None = None,
        init_range: RangeEstimator | None = None,
        rounding: str = "nearest",
        spec: str | None = None,
    ) -> None:
        super().__init__(fmt, LSQInit(init_range), granularity, rounding=rounding, spec=spec)
        del self.scale  # the buffer becomes a parameter
        self.scale = nn.Parameter(torch.empty(0))
        if init is not None:
            self.init_from(init)

    def _layout(self, x: Tensor) -> _Layout:
        # The cached layout for x's shape (rebuilt if the shape, granularity or format changed).
        lay = self._lay
        if lay is None or lay.shape != x.shape or lay.gran is not self.granularity or lay.fmt is not self.fmt:
            lay = self._lay = _Layout(x.shape, self.granularity, self.fmt)
        return lay

    def init_from(self, x: Tensor) -> "LSQQuantizer":
        """Set the step size to LSQ's initial value for ``x``."""
        rows = self._rows(x)
        if not torch.isfinite(rows).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        est = self.range
        if isinstance(est, LSQInit) and est.init is not None:
            scale, _ = scale_from_range(*est.init(rows.float(), self.fmt), self.fmt)
        else:
            scale = lsq_init_scale(rows, self.fmt)
        self.scale.data = scale.to(x.device)
        return self

    def _set(self, scale: Tensor, zp: Tensor | None) -> None:
        # Keep the Parameter object (an optimizer may hold it); no zero point.
        self.scale.data = scale.detach().to(torch.float32).to(self.scale.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        if prefix + "scale" in state_dict:
            self.scale.data = torch.empty_like(state_dict[prefix + "scale"])
        if prefix + "zero_point" in state_dict:
            self.zero_point = torch.empty_like(state_dict[prefix + "zero_point"])
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize with the learned step size; LSQ gradients to ``x`` and ``scale``."""
        s = self.scale
        if not s.numel():  # not frozen yet: activations take their first batch's step size
            with torch.no_grad():
                self.init_from(x)
        if torch.is_grad_enabled() and (s.requires_grad or x.requires_grad):
            return _LSQ.apply(x, s, self)
        lay = self._layout(x)
        lo, hi, _ = lay.limits()
        v = lay.gran.to_rows(x) if lay.rows else x
        sc = lay.steps(s, v)
        out = lay.fmt.quantize_clamped(torch.clamp(v / sc, lo, hi), self.rounding, self.generator) * sc
        return lay.gran.from_rows(out, x.shape) if lay.rows else out

