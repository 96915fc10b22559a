"""``DoReFaQuantizer``: DoReFa weights through tanh onto levels in [-1, 1]."""
from __future__ import annotations

import torch
from torch import Tensor

from ..qtensor import QTensor
from .base import Quantizer

__all__ = ["DoReFaQuantizer"]


class DoReFaQuantizer(Quantizer):
    """DoReFa weights: ``t = tanh(w) / max|tanh(w)|`` per slice, then the nearest of 2^k levels in [-1, 1].

    The output is in DoReFa's units ([-1, 1]), not the weight's; the gradient
    flows through tanh and the normalisation (straight-through on rounding only).
    Its QTensor has scale 1, so ``dequantize()`` equals ``q(w)``.
    """

    def _normalise(self, x: Tensor) -> Tensor:
        if x.numel() == 0:  # the normalisation is fitted to x (its max), and an empty x has none
            raise ValueError("x is empty: there is nothing to quantize")
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
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
        t = self._normalise(x.detach().float())
        codes = self.fmt.encode(t, self.rounding, self.generator)
        return QTensor.from_codes(codes, self.compute_scale(x)[0], None, self.fmt, self.granularity, x.shape)

