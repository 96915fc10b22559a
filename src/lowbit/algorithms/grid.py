"""A weight quantizer's grid as per-element maps, for the algorithms that choose grid points themselves.

GPTQ and AdaRound decide, weight by weight, which level of the format each weight
takes; the scale (and zero point) stays the one the quantizer fitted. They work on
the 2-D view ``[out, in * kernel]`` of a weight, so the scale of every element is
spread into a map of that shape. :func:`to_grid` computes exactly what the quantizer's
forward pass computes (``(level - z) * s``, the same operations in the same order),
so a weight written from it is a fixed point of the quantizer: ``q(w) == w``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..formats import Format
from ..quantizer import Quantizer
from ..ranges import scale_from_range

__all__ = ["check_plain", "element_grid", "to_grid", "fit_rows"]


def check_plain(q: object, name: str = "layer") -> Quantizer:
    """The quantizer if it rounds with a fixed scale (the plain ``Quantizer``), else a ValueError naming ``name``."""
    if type(q) is not Quantizer:  # LSQ/DoReFa/centered quantizers compute their grid differently
        spec = getattr(q, "spec", type(q).__name__)
        raise ValueError(f"{name}: weight quantizer {spec!r} is not a plain PTQ quantizer; "
                         "method='gptq'/'adaround' need a fixed-scale spec such as 'int4:channel:mse'")
    return q


def element_grid(q: Quantizer, w: Tensor) -> tuple[Tensor, Tensor | None]:
    """Per-element scale and zero-point maps of ``w`` under ``q``'s frozen scale, in the 2-D ``[out, -1]`` view."""
    if not q.frozen:
        raise ValueError("the weight quantizer has no fitted scale yet: call q.fit(weight) first")
    scale, zp = q.compute_scale(w)
    rows = q.granularity.to_rows(w)
    s = scale.reshape(-1, 1).to(torch.float32).expand(rows.shape)
    smap = q.granularity.from_rows(s.contiguous(), w.shape).reshape(w.shape[0], -1)
    if zp is None:
        return smap, None
    z = zp.reshape(-1, 1).to(torch.float32).expand(rows.shape)
    return smap, q.granularity.from_rows(z.contiguous(), w.shape).reshape(w.shape[0], -1)


def to_grid(x: Tensor, fmt: Format, s: Tensor, z: Tensor | None) -> Tensor:
    """Round ``x`` to the nearest grid point ``(level - z) * s`` (elementwise maps ``s``, ``z``)."""
    xn = x / s
    if z is not None:
        xn = xn + z
    q = fmt.quantize(xn, "nearest")
    if z is not None:
        q = q - z
    return q * s


def fit_rows(q: Quantizer, rows: Tensor) -> tuple[Tensor, Tensor | None]:
    """Scale and zero point that ``q``'s range estimator fits to each row of ``rows`` (one group a row)."""
    lo, hi = q.range(rows.float(), q.fmt)
    return scale_from_range(lo, hi, q.fmt, q.pow2)
