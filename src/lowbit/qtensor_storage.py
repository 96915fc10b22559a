"""Storage accounting of QTensors: bits per parameter, and NF4's double quantization of the block scales."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .formats.levels import _int_in
from .qtensor import QTensor

__all__ = ["DoubleQuantScales", "double_quantize_scales", "double_quantize", "bits_per_param"]


@dataclass(frozen=True)
class DoubleQuantScales:
    """Block scales stored as int8 (``q``), one fp32 step per block of scales, and their fp32 mean."""

    q: Tensor
    step: Tensor
    mean: Tensor
    block: int

    def dequantize(self) -> Tensor:
        """The fp32 scales: ``q * step[block] + mean``."""
        n = self.q.numel()
        step = self.step.repeat_interleave(self.block)[:n]
        return self.q.float() * step + self.mean

    @property
    def nbits(self) -> int:
        """Storage bits: 8 per scale, 32 per block step, 32 for the mean."""
        return 8 * self.q.numel() + 32 * self.step.numel() + 32


def double_quantize_scales(scales: Tensor, block: int = 256) -> DoubleQuantScales:
    """Quantize scales to int8 after subtracting their mean, with a symmetric absmax step per ``block``."""
    _int_in("block", block, 1, 2**20)
    s = scales.detach().reshape(-1).float()
    if s.numel() == 0 or not torch.isfinite(s).all():
        raise ValueError("scales must be a non-empty finite tensor")
    mean = s.mean()
    c = s - mean
    n = c.numel()
    padded = torch.nn.functional.pad(c, (0, (-n) % block)).reshape(-1, block)
    amax = padded.abs().amax(dim=1)
    step = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(padded / step[:, None]).clamp(-127, 127).to(torch.int8).reshape(-1)[:n]
    return DoubleQuantScales(q, step, mean, block)


def double_quantize(qt: QTensor, block: int = 256) -> tuple[QTensor, DoubleQuantScales]:
    """QLoRA double quantization: the same codes, with scales replaced by their 8-bit reconstruction."""
    if qt.zero_point is not None:
        raise ValueError("double quantization needs a symmetric QTensor (no zero points)")
    dq = double_quantize_scales(qt.scale, block)
    return QTensor(qt.data, dq.dequantize(), None, qt.fmt, qt.granularity, qt.shape), dq


def bits_per_param(
    qt: QTensor, dq: DoubleQuantScales | None = None, *, trits: bool = False, scale_bits: int = 32
) -> float:
    """Storage bits per value: packed codes plus scales (``scale_bits`` each, or ``dq``) and zero points.

    ``trits=True`` counts a 3-level format packed 5 codes per byte (base 3);
    ``scale_bits=8`` counts power-of-two scales stored as an 8-bit exponent (MX's E8M0).
    """
    if trits and qt.fmt.levels.numel() > 3:
        raise ValueError(f"trits=True needs a format of at most 3 levels, {qt.fmt.spec!r} has {qt.fmt.levels.numel()}")
    _int_in("scale_bits", scale_bits, 1, 64)
    if scale_bits < 32 and dq is None and not torch.equal(qt.scale, torch.exp2(torch.log2(qt.scale).round())):
        raise ValueError(f"scale_bits={scale_bits} needs power-of-two scales (pow2); use 32 for float scales")
    code_bits = 8 * ((qt.numel + 4) // 5) if trits else 8 * qt.data.numel()
    zp_bits = 0 if qt.zero_point is None else 32 * qt.zero_point.numel()
    s_bits = dq.nbits if dq is not None else scale_bits * qt.scale.numel()
    return (code_bits + s_bits + zp_bits) / qt.numel
