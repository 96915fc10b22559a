"""``CenteredQuantizer``: quantizes ``w - mean(w)`` per slice (BitNetMCU ``binary``)."""
from __future__ import annotations

from torch import Tensor

from .base import Quantizer

__all__ = ["CenteredQuantizer"]


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
