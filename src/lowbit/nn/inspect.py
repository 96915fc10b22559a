"""``lowbit.inspect(model)``: per quantized layer, its format, bits, bytes in memory and the kernel it takes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import kernels, packed
from .layers import QuantLayer

__all__ = ["LayerReport", "inspect", "layer_reports"]


@dataclass(frozen=True)
class LayerReport:
    """One layer: name, format, storage bits, bytes held for its weight, the path taken per activation dtype (batch 1).

    A path is ``"exact"`` (decode the whole weight, bit-equal), a kernel's name (``"int8"``, ``"int4"``,
    ``"int8x8"``), ``"<kernel>@bf16"`` (float32 activations through the kernel in bfloat16) or
    ``"decode"`` (the kernel's layout decoded block by block), as :func:`lowbit.nn.kernels.path_for` measured."""

    name: str
    format: str
    bits: int | None
    nbytes: int
    float_nbytes: int
    kernel_fp32: str
    kernel_bf16: str


def _path(layer: QuantLayer, dtype: torch.dtype) -> str:
    k = getattr(layer, "kernel", None)
    if not layer.converted:
        return "fake-quant" if layer.weight_quant is not None else "float"
    if k is None:
        return "exact"
    n, kk = layer._qmeta.shape
    return kernels.path_for(k, n, kk, dtype, 1, layer)  # e.g. "int4", "int8@bf16", "int8x8", "decode"


def layer_reports(model: nn.Module) -> list[LayerReport]:
    """The per-layer rows :func:`inspect` prints (measuring kernel choices not yet in the table)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, QuantLayer):
            continue
        if m.converted:
            meta = m._qmeta
            fmt, bits, nbytes = meta.fmt.spec, meta.fmt.bits, packed.packed_nbytes_of(m)
            fl = meta.shape.numel() * torch.finfo(meta.dtype).bits // 8
        else:
            w = m.weight
            fmt, bits = (m.weight_spec or "float"), None
            nbytes = fl = w.numel() * w.element_size()
        rows.append(LayerReport(name, fmt, bits, nbytes, fl, _path(m, torch.float32), _path(m, torch.bfloat16)))
    return rows


def inspect(model: nn.Module) -> list[LayerReport]:
    """Print (and return) each quantized layer's format, bits, bytes and the kernel chosen for fp32/bf16 at batch 1."""
    rows = layer_reports(model)
    head = f"{'layer':<24} {'format':<10} {'bits':>4} {'bytes':>12} {'x smaller':>9}  kernel fp32 / bf16"
    print(head)
    for r in rows:
        ratio = r.float_nbytes / r.nbytes if r.nbytes else float("nan")
        print(f"{r.name:<24} {r.format:<10} {r.bits if r.bits is not None else '-':>4} {r.nbytes:>12,} {ratio:>9.2f}  "
              f"{r.kernel_fp32} / {r.kernel_bf16}")
    return rows
