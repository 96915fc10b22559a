"""Activation quantizers: ``ActQuant`` (a layer's input) and ``PACT`` (a ReLU with a learned clip).

``ActQuant`` wraps a :class:`~lowbit.quantizer.Quantizer` and has three modes:

- *calibrating* (PTQ): records range statistics of the float input and passes it on
  unchanged; ``freeze()`` then fixes the scale;
- *tracking* (QAT): keeps an exponential moving average of the batch ranges and
  quantizes with the scale of that average, in training and in eval alike, so
  what is trained is what is evaluated;
- *frozen*: a fixed scale (after calibration, or after ``convert``).

An LSQ quantizer (spec token ``lsq``) learns its scale instead, in every mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formats import Uniform
from ..quantizers import LSQQuantizer, Quantizer, round_ste
from ..ranges import scale_from_range

__all__ = ["ActQuant", "PACT", "pact_penalty"]


class ActQuant(nn.Module):
    """Fake-quantizes activations: calibrated (PTQ), moving-average (QAT) or fixed scale."""

    running_lo: Tensor
    running_hi: Tensor

    def __init__(self, quantizer: Quantizer, *, momentum: float = 0.1) -> None:
        super().__init__()
        if not isinstance(quantizer, Quantizer):
            raise TypeError(f"quantizer must be a lowbit Quantizer, got {type(quantizer).__name__}")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.q = quantizer
        self.momentum = float(momentum)
        self.calibrating = False
        self.tracking = False
        self.register_buffer("running_lo", torch.empty(0))
        self.register_buffer("running_hi", torch.empty(0))

    @property
    def spec(self) -> str:
        """Spec string of the wrapped quantizer."""
        return self.q.spec

    @property
    def learned(self) -> bool:
        """True when the scale is a learned parameter (LSQ)."""
        return isinstance(self.q, LSQQuantizer)

    def extra_repr(self) -> str:
        mode = "calibrating" if self.calibrating else "tracking" if self.tracking else "fixed"
        return f"mode={mode}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        for name in ("running_lo", "running_hi"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _track(self, x: Tensor) -> None:
        rows = self.q.granularity.to_rows(x.detach()).float()
        lo, hi = self.q.range(rows, self.q.fmt)
        if self.running_lo.numel() == 0:
            self.running_lo, self.running_hi = lo.clone(), hi.clone()
        else:
            self.running_lo.lerp_(lo, self.momentum)
            self.running_hi.lerp_(hi, self.momentum)

    def _sync(self) -> None:
        # Fix the quantizer's scale at the moving-average range.
        scale, zp = scale_from_range(self.running_lo, self.running_hi, self.q.fmt, self.q.pow2)
        self.q.scale = scale.to(self.running_lo.device)
        self.q.zero_point = (zp if zp is not None else torch.empty(0, dtype=torch.int32)).to(self.running_lo.device)

    def freeze(self) -> "ActQuant":
        """Fix the scale: from the calibration batches, or from the moving average."""
        if self.calibrating:
            self.q.freeze()
            self.calibrating = False
        elif self.tracking:
            if self.running_lo.numel() == 0:
                raise ValueError("this activation quantizer has seen no data: train or calibrate before convert")
            self._sync()
            self.tracking = False
        elif not self.q.frozen:
            raise ValueError("this activation quantizer has no range: calibrate it (lowbit.calibrate) first")
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Quantize ``x`` (or, while calibrating, record its range and pass it through)."""
        if self.learned:
            return self.q(x)
        if self.calibrating:
            self.q.observe(x)
            return x
        if self.tracking:
            if self.training:
                self._track(x)
            if self.running_lo.numel():
                self._sync()
        return self.q(x)


class PACT(nn.Module):
    """ReLU with a learned clip ``alpha`` and ``bits``-bit unsigned output (Choi et al., 2018).

    ``y = round(clip(x, 0, alpha) * (2^b-1)/alpha) * alpha/(2^b-1)``, straight-through
    rounding; ``d y / d alpha = 1`` where ``x >= alpha``. Add ``lambda * alpha^2``
    to the loss with :func:`pact_penalty` (a real term, with a gradient).
    """

    def __init__(self, bits: int = 4, alpha_init: float = 10.0) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an int in 1..16, got {bits!r}")
        if not alpha_init > 0:
            raise ValueError(f"alpha_init must be > 0, got {alpha_init}")
        self.bits = bits
        self.fmt = Uniform(bits, signed=False)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha.detach()):.4g}"

    @property
    def spec(self) -> str:
        """Spec string: ``uint<b>:pact``."""
        return f"uint{self.bits}:pact"

    def forward(self, x: Tensor) -> Tensor:
        """Clip to [0, alpha] and quantize to 2^bits levels."""
        y = F.relu(x)
        alpha = self.alpha.to(y.dtype)
        y = torch.where(y < alpha, y, alpha)
        n = float(2**self.bits - 1)
        step = (alpha / n).detach()
        return round_ste(y / step, self.fmt) * step

    def penalty(self) -> Tensor:
        """The L2 term ``alpha^2``."""
        return self.alpha**2


def pact_penalty(model: nn.Module) -> Tensor:
    """Sum of ``alpha^2`` over the model's PACT modules (0 if none)."""
    terms = [m.penalty() for m in model.modules() if isinstance(m, PACT)]
    if terms:
        return torch.stack(terms).sum()
    device = next((p.device for p in model.parameters()), None)
    return torch.zeros((), device=device)
