"""Quantizer: format + range + granularity + rounding + gradient, as an ``nn.Module``.

``q(x)`` returns the fake-quantized tensor (float values on the grid, gradients
flowing to ``x`` straight through); ``q.encode(x)`` returns a :class:`QTensor`.

The scale is *dynamic* (fitted to each input) until the quantizer is
calibrated: ``q.observe(x)`` on a few batches, then ``q.freeze()`` (or
``q.calibrate(batches)`` for both). ``q.fit(tensors)`` fits one scale shared
by several tensors (a population: all weights into one layer of neurons).

Bad input, on purpose: NaN/Inf and an empty ``x`` raise ``ValueError`` wherever a scale
is fitted to ``x`` (dynamic scaling, ``observe``, ``fit``; DoReFa's per-slice maximum) and
in ``encode`` (no code stands for NaN, and there is nothing to write); with a frozen
scale the training-time ``forward`` (the hot path) checks neither: NaN passes on, Inf
saturates and an empty ``x`` gives an empty output.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..formats import Format, format_from_spec
from ..qtensor import QTensor
from ..ranges import Granularity, MinMax, RangeEstimator, range_from_token, range_names, scale_from_range
from .spec import _GRADIENTS, _ROUNDINGS, QuantSpec

__all__ = ["Quantizer"]


class _StraightThrough(torch.autograd.Function):
    """Returns the quantized values; passes the gradient to the input unchanged (or masked to the range)."""

    @staticmethod
    def forward(ctx, x: Tensor, q: Tensor, mask: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask) if mask is not None else ctx.save_for_backward()
        ctx.masked = mask is not None
        ctx.mark_non_differentiable(q)
        return q.view_as(q)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        if ctx.masked:
            (mask,) = ctx.saved_tensors
            return torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None, None
        return grad, None, None


class Quantizer(nn.Module):
    """Fake-quantizes tensors onto a format's grid; encodes them to QTensors."""

    scale: Tensor
    zero_point: Tensor

    def __init__(
        self,
        fmt: Format | str,
        range: RangeEstimator | str = "minmax",
        granularity: Granularity | str = "tensor",
        *,
        pow2: bool = False,
        rounding: str = "nearest",
        gradient: str = "ste",
        generator: torch.Generator | None = None,
        spec: str | None = None,
    ) -> None:
        super().__init__()
        self.fmt = format_from_spec(fmt) if isinstance(fmt, str) else fmt
        if not isinstance(self.fmt, Format):
            raise TypeError(f"fmt must be a Format or a format name, got {type(fmt).__name__}")
        if isinstance(range, str):
            est = range_from_token(range)
            if est is None:
                raise ValueError(f"unknown range {range!r}; valid ranges: {', '.join(range_names())}")
            range = est
        self.range = range
        self.granularity = Granularity.from_spec(granularity) if isinstance(granularity, str) else granularity
        if rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
        if gradient not in _GRADIENTS:
            raise ValueError(f"gradient must be one of {_GRADIENTS}, got {gradient!r}")
        self.pow2 = bool(pow2)
        self.rounding = rounding
        self.gradient = gradient
        self.generator = generator
        self._spec = spec
        self.register_buffer("scale", torch.empty(0), persistent=True)
        self.register_buffer("zero_point", torch.empty(0, dtype=torch.int32), persistent=True)
        self._obs: list[tuple[Tensor, Tensor]] = []
        self._obs_shape: torch.Size | None = None

    # ------------------------------------------------------------------ description

    @property
    def spec(self) -> str:
        """The spec string that rebuilds this quantizer."""
        if self._spec is not None:
            return self._spec
        return str(
            QuantSpec(self.fmt.spec, self.granularity.spec, self.range.spec, self.pow2, self.rounding, self.gradient)
        )

    @property
    def bits(self) -> int:
        """Storage bits per code."""
        return self.fmt.bits

    @property
    def frozen(self) -> bool:
        """True once a scale is fixed (calibrated or fitted)."""
        return self.scale.numel() > 0

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, frozen={self.frozen}"

    # ------------------------------------------------------------------ scales

    def _rows(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.numel() == 0:
            raise ValueError("x is empty: there is nothing to quantize")
        return self.granularity.to_rows(x.detach())

    def _fit(self, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        lo, hi = self.range(rows.float(), self.fmt)
        return scale_from_range(lo, hi, self.fmt, self.pow2)

    def compute_scale(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-row scale and zero point for ``x``: the frozen ones, or fitted to ``x``."""
        if self.frozen:
            n = self.granularity.n_slices(x.shape)
            if self.scale.numel() not in (1, n):
                raise ValueError(
                    f"this quantizer was calibrated with {self.scale.numel()} scales, but x of shape "
                    f"{tuple(x.shape)} needs {n} at granularity {self.granularity.spec!r}"
                )
            return self.scale, (self.zero_point if self.zero_point.numel() else None)
        return self._fit(self._rows(x))

    def observe(self, x: Tensor) -> None:
        """Record range statistics of one batch (for calibration; see :meth:`freeze`)."""
        rows = self._rows(x)
        if self._obs_shape is not None and rows.shape[0] != self._obs_shape[0]:
            raise ValueError(f"observed tensors must keep {self._obs_shape[0]} slices, got {rows.shape[0]}")
        self._obs_shape = rows.shape
        self._obs.append(self.range(rows.float(), self.fmt))

    def freeze(self) -> "Quantizer":
        """Fix the scale from the observed batches: min/max over batches for ``minmax``, else the mean."""
        if not self._obs:
            raise ValueError("freeze() needs at least one observe(x) call first")
        los = torch.stack([o[0] for o in self._obs])
        his = torch.stack([o[1] for o in self._obs])
        if isinstance(self.range, MinMax):
            lo, hi = los.amin(0), his.amax(0)
        else:
            lo, hi = los.mean(0), his.mean(0)
        self._set(*scale_from_range(lo, hi, self.fmt, self.pow2))
        self._obs.clear()
        return self

    def calibrate(self, batches: Iterable[Tensor]) -> "Quantizer":
        """Observe every batch, then freeze."""
        for b in batches:
            self.observe(b)
        return self.freeze()

    def fit(self, tensors: Tensor | Sequence[Tensor]) -> "Quantizer":
        """Freeze one scale fitted to ``tensors`` together (a population shares it)."""
        if isinstance(tensors, Tensor):
            tensors = [tensors]
        if not tensors:
            raise ValueError("tensors must hold at least one tensor")
        if len(tensors) > 1:
            if self.granularity.kind == "group":
                raise ValueError("a shared (population) scale needs granularity 'tensor' or 'channel'")
            rows = torch.cat([self._rows(t) for t in tensors], dim=1)
        else:
            rows = self._rows(tensors[0])
        self._set(*self._fit(rows))
        return self

    def reset(self) -> "Quantizer":
        """Forget the frozen scale: back to dynamic scaling."""
        self._set(torch.empty(0), None)
        self._obs.clear()
        self._obs_shape = None
        return self

    def set_scale(self, scale: Tensor | float, zero_point: Tensor | int | None = None) -> "Quantizer":
        """Freeze a given scale (one per slice, or one for all) and optional integer zero point."""
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if scale.numel() == 0 or not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise ValueError("scale must hold finite values > 0")
        zp = None if zero_point is None else torch.as_tensor(zero_point, dtype=torch.int32).reshape(-1)
        if zp is not None and zp.numel() != scale.numel():
            raise ValueError(f"zero_point has {zp.numel()} values but scale has {scale.numel()}")
        self._set(scale, zp)
        return self

    def _set(self, scale: Tensor, zp: Tensor | None) -> None:
        # The scale lives where the data that produced it lives (module.to() moves it later).
        self.scale = scale.detach().to(torch.float32)
        self.zero_point = (zp if zp is not None else torch.empty(0, dtype=torch.int32, device=scale.device)).detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Buffers change size when calibrated: adopt the saved shapes (buffers only:
        # a subclass may hold its scale as a Parameter).
        for name in ("scale", "zero_point"):
            if prefix + name in state_dict and name in self._buffers:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ quantization

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize: values on the grid, straight-through gradient to ``x``."""
        scale, zp = self.compute_scale(x)
        rows = self.granularity.to_rows(x)
        needs_grad = rows.requires_grad and torch.is_grad_enabled()
        with torch.no_grad():
            # All temporaries are ours: in-place ops keep this to a few passes.
            s = scale.to(rows.dtype)[:, None]
            xn = rows / s
            if zp is not None:
                z = zp.to(rows.dtype)[:, None]
                xn.add_(z)
            mask = None
            if needs_grad and self.gradient == "clipped":
                mask = (xn >= self.fmt.lo) & (xn <= self.fmt.hi)
            q = self.fmt.quantize_(xn, self.rounding, self.generator)  # xn is ours to overwrite
            if zp is not None:
                q.sub_(z)
            q.mul_(s)
        out = _StraightThrough.apply(rows, q, mask) if needs_grad else q
        return self.granularity.from_rows(out, x.shape)

    def encode(self, x: Tensor) -> QTensor:
        """Quantize ``x`` to a :class:`QTensor` (packed codes, scales, zero points)."""
        rows = self._rows(x)
        # A fitted range has already checked the data; a frozen scale has not.
        if self.frozen and not torch.isfinite(rows).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        scale, zp = self.compute_scale(x)
        xn = rows.float() / scale[:, None]
        if zp is not None:
            xn = xn.add_(zp[:, None].float())
        codes = self.fmt.encode_(xn, self.rounding, self.generator)  # xn is ours to overwrite
        return QTensor.from_codes(codes, scale, zp, self.fmt, self.granularity, x.shape, trusted=True)

