"""LSQ: a quantizer whose step size is learned (Esser et al., ICLR 2020).

``scale`` is an ``nn.Parameter``; its gradient is scaled by ``1/sqrt(N*Qp)``
(``N`` = values sharing one step size, ``Qp`` = the top level), and it starts
at ``2*mean|v|/sqrt(Qp)`` (from the weights at construction, or from the first
batch for activations). The spec token ``lsq`` selects it in :mod:`lowbit.nn`
layers; as a plain range (``lowbit.quantizer("int4:lsq")``) the token gives
that initial scale, fixed.

Unsigned formats have no zero point here: as in the paper they assume
non-negative inputs (post-ReLU activations).
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

from ..formats import Format, format_from_spec
from ..quantizer import Quantizer, parse_spec
from ..ranges import Granularity, RangeEstimator, range_from_token, range_names, register_range, scale_from_range

__all__ = ["LSQQuantizer", "LSQInit", "lsq_init_scale"]


def _qp(fmt: Format) -> float:
    # Qp: the top level (LSQ's 2^(b-1)-1 for signed, 2^b-1 for unsigned integers).
    return fmt.hi if fmt.hi > 0 else max(abs(fmt.lo), 1e-12)


def lsq_init_scale(rows: Tensor, fmt: Format) -> Tensor:
    """LSQ's initial step size per row: ``2*mean|v|/sqrt(Qp)``."""
    s = 2 * rows.detach().abs().float().mean(dim=1) / math.sqrt(_qp(fmt))
    return torch.where(s > 0, s, torch.ones_like(s))


class LSQInit(RangeEstimator):
    """Range token ``lsq`` (or ``lsq.<range>``, e.g. ``lsq.mse``): LSQ's initial clip.

    ``lsq`` starts from the paper's ``2*mean|v|/sqrt(Qp)``; ``lsq.<range>`` starts
    from the clip another range estimator finds (as Torch2Chip starts from MSE).
    """

    def __init__(self, init: RangeEstimator | None = None) -> None:
        self.init = init
        self.spec = "lsq" if init is None else f"lsq.{init.spec}"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        if not torch.isfinite(rows).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        if self.init is not None:
            return self.init(rows, fmt)
        s = lsq_init_scale(rows, fmt)
        return s * min(fmt.lo, 0.0), s * fmt.hi


def _lsq_range(m: "re.Match[str]") -> LSQInit:
    if m.group("init") is None:
        return LSQInit()
    est = range_from_token(m.group("init"))
    if est is None or isinstance(est, LSQInit):
        raise ValueError(f"lsq.<range>: unknown range {m.group('init')!r}; valid: {', '.join(range_names())}")
    return LSQInit(est)


register_range(r"lsq(?:\.(?P<init>.+))?", _lsq_range, "lsq / lsq.<range> (learned step size in QAT layers)")


class _LSQ(torch.autograd.Function):
    """Fused LSQ fake quantization of a row view: one autograd node per call.

    Forward ``q(clamp(v/s)) * s``; backward: straight through inside the range,
    ``d/ds = (q - v/s)`` inside and ``q`` (the clip level) outside, times ``g``.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, s: Tensor, g: float, fmt: Format, rounding: str, generator: torch.Generator | None) -> Tensor:  # type: ignore[override]
        sc = s.to(rows.dtype)[:, None]
        xn = rows / sc
        q = fmt.quantize(torch.clamp(xn, fmt.lo, fmt.hi), rounding, generator)
        ctx.save_for_backward(xn, q)
        ctx.g, ctx.lo, ctx.hi = g, fmt.lo, fmt.hi
        return q * sc

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xn, q = ctx.saved_tensors
        inside = (xn >= ctx.lo) & (xn <= ctx.hi)
        grad_rows = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = (grad * (q - xn * inside)).sum(dim=1) * ctx.g
        return grad_rows, grad_s, None, None, None, None


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
        if not self.frozen:
            with torch.no_grad():
                self.init_from(x)  # activations: first batch
        rows = self.granularity.to_rows(x)
        s = self.scale
        if s.shape[0] not in (1, rows.shape[0]):
            raise ValueError(f"this LSQ quantizer has {s.shape[0]} step sizes but x needs {rows.shape[0]}")
        if torch.is_grad_enabled() and (s.requires_grad or rows.requires_grad):
            g = 1.0 / math.sqrt(rows.shape[1] * _qp(self.fmt))
            out = _LSQ.apply(rows, s, g, self.fmt, self.rounding, self.generator)
        else:
            sc = s.to(rows.dtype)[:, None]
            out = self.fmt.quantize(torch.clamp(rows / sc, self.fmt.lo, self.fmt.hi), self.rounding, self.generator) * sc
        return self.granularity.from_rows(out, x.shape)


def lsq_from_spec(spec: str, init: Tensor | None = None) -> LSQQuantizer:
    """Build an :class:`LSQQuantizer` from a spec whose range token is ``lsq``."""
    p = parse_spec(spec)
    est = range_from_token(p.range)
    if not isinstance(est, LSQInit):
        raise ValueError(f"spec {spec!r} has range {p.range!r}; an LSQ quantizer needs the 'lsq' token")
    if p.pow2 or p.gradient != "ste":
        raise ValueError(f"spec {spec!r}: 'lsq' cannot be combined with pow2 or a gradient token")
    return LSQQuantizer(
        format_from_spec(p.format), p.granularity, init=init, init_range=est.init, rounding=p.rounding, spec=str(p)
    )
