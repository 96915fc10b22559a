"""The in-memory form of a converted layer: packed codes and scales as buffers, no float weight.

A converted :class:`~lowbit.nn.layers.QuantLayer` holds

- ``qweight_codes``: the QTensor's bit-packed codes (uint8; two 4-bit codes a byte,
  3-bit codes as a bit stream, codebook indices for NF4 and learned codebooks);
- ``qweight_scale`` (float32) and, for asymmetric formats, ``qweight_zero_point``;

and a :class:`PackedMeta` (format, granularity, shape, float dtype) as a plain attribute.
``state_dict()`` therefore is the packed size, and the float weight exists only while a
forward call (or a ``layer.weight`` read) decodes it. The decode is exactly
``QTensor.dequantize()``: a converted model equals the fake-quantized one bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..formats import Format
from ..qtensor import QTensor
from ..ranges import Granularity

__all__ = ["PackedMeta", "install", "qtensor_of", "dequantize", "packed_nbytes_of", "PREFIX"]

PREFIX = "qweight_"  # every buffer a converted layer holds for its weight starts with it


@dataclass(frozen=True)
class PackedMeta:
    """What the packed buffers need to become a QTensor again: format, granularity, shape, float dtype."""

    fmt: Format
    granularity: Granularity
    shape: torch.Size
    dtype: torch.dtype


def install(layer: Any, qt: QTensor, *, device: torch.device, dtype: torch.dtype) -> None:
    """Register ``qt``'s packed codes, scales and zero points as ``layer``'s buffers."""
    for name in [b for b in layer._buffers if b.startswith(PREFIX)]:
        del layer._buffers[name]
    # copies: the QTensor may share its scale with a quantizer (or a file's mapping)
    layer.register_buffer(PREFIX + "codes", qt.data.detach().to(device).clone())
    layer.register_buffer(PREFIX + "scale", qt.scale.detach().float().to(device).clone())
    if qt.zero_point is not None:
        layer.register_buffer(PREFIX + "zero_point", qt.zero_point.detach().to(device).clone())
    layer._qmeta = PackedMeta(qt.fmt, qt.granularity, torch.Size(qt.shape), dtype)


def qtensor_of(layer: Any) -> QTensor:
    """The layer's converted weight as a QTensor over its own buffers (no copy)."""
    b, m = layer._buffers, layer._qmeta
    codes = b.get(PREFIX + "codes")
    if codes is None:  # a kernel keeps its own layout instead: it knows how to give the codes back
        codes = layer.kernel.codes(layer)
    return QTensor(codes, b[PREFIX + "scale"], b.get(PREFIX + "zero_point"), m.fmt, m.granularity, m.shape)


def _dtype(layer: Any) -> torch.dtype:
    # model.to(torch.bfloat16) casts the float scale buffer: follow it, as a float weight would
    s = layer._buffers[PREFIX + "scale"].dtype
    return s if s != torch.float32 else layer._qmeta.dtype


def dequantize(layer: Any) -> Tensor:
    """The float weight of a converted layer, decoded now: exactly ``qweight.dequantize()`` in the layer's dtype."""
    qt = qtensor_of(layer)
    if qt.scale.dtype != torch.float32:
        qt.scale = qt.scale.float()
    if qt.data.device.type != "cpu" and qt.bits not in (1, 2, 4, 8):
        # 3/5/6/7-bit decode (unpack_lookup's word path) is only tested on the CPU: decode there, then move
        qt = QTensor(qt.data.cpu(), qt.scale.cpu(), None if qt.zero_point is None else qt.zero_point.cpu(),
                     qt.fmt, qt.granularity, qt.shape)
        return qt.dequantize().to(device=layer._buffers[PREFIX + "scale"].device, dtype=_dtype(layer))
    return qt.dequantize().to(_dtype(layer))


def packed_nbytes_of(layer: Any) -> int:
    """Bytes the layer's weight occupies in memory (its ``qweight_*`` buffers)."""
    return sum(b.numel() * b.element_size() for n, b in layer._buffers.items() if n.startswith(PREFIX) and b is not None)
