"""PyTorch's low-bit matmul kernels for converted linears, chosen per shape and dtype by measurement.

``lowbit.convert(model, kernels="auto")`` gives each eligible ``QuantLinear`` a kernel that
keeps the weight in the kernel's own packed layout (in place of the generic codes, so the
memory stays the packed size):

- ``int8``: ``aten._weight_int8pack_mm`` — int8 symmetric weights, one scale per output
  channel (or per tensor);
- ``int4``: ``aten._weight_int4pack_mm_for_cpu`` — int4 weights, group size 32..256 along
  the input dimension (signed: zero 0; unsigned with zero points: ``(8 - zp) * scale``).

At every call the layer takes the kernel or the exact path (decode, then ``F.linear``)
by a table measured once per process for (kernel, N, K, activation dtype, batch 1 or more)
— see :func:`choice`. The PyTorch docs and our measurements disagree with guesses (the
int8 kernel is ~3x *slower* than a float32 matvec with float32 activations, faster with
bfloat16), so nothing here is assumed.

Accuracy (a kernel is not bit-equal to the fake-quantized layer: it scales after, not
before, the dot product and accumulates in its own order). For output ``i`` with
``a_i = sum_k |x_k| |W_ik|`` (``W`` the dequantized weight), both results are sums of K
rounded products, so ``|y_i - r_i| <= c * eps * a_i`` with ``c`` growing as ``sqrt(K)``
for random-sign rounding errors (``K`` in the worst case); bfloat16 activations add the
rounding of the scales and of the output (``2 eps``). The tests hold the kernels to
``|y_i - r_i| <= (2 + 2 sqrt(K)) * eps(dtype) * a_i`` against a float64 reference.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..formats import Uniform
from . import packed

__all__ = ["Kernel", "Int8Kernel", "Int4Kernel", "kernel_for", "choice", "measured_table", "KERNEL_MODES"]

KERNEL_MODES = ("exact", "auto")
_TABLE: dict[tuple[str, int, int, str, str], bool] = {}  # (kernel, N, K, dtype, batch) -> kernel wins


def _has(op: str) -> bool:
    return hasattr(torch.ops.aten, op)


class Kernel:
    """A low-bit matmul for one converted linear; holds no tensors (they are the layer's buffers)."""

    name = "exact"
    buffers: tuple[str, ...] = ()

    def __call__(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """``layer``'s output for ``x``: the kernel where the measured table says it wins, else the exact path."""
        if x.dtype in (torch.float32, torch.bfloat16) and x.device.type == "cpu":
            n, k = layer._qmeta.shape
            if choice(self, n, k, x.dtype, x.numel() // max(1, k), layer):
                return self.run(layer, x, bias)
        return F.linear(x, packed.dequantize(layer), bias)  # the exact path, as kernels="exact"

    def run(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """The kernel's output (always the kernel, no table)."""
        raise NotImplementedError

    def pack(self, layer: Any) -> None:
        """Replace the layer's generic codes by the kernel's layout."""
        raise NotImplementedError

    def codes(self, layer: Any) -> Tensor:
        """The generic packed codes (``QTensor.data``) rebuilt from the kernel's layout."""
        raise NotImplementedError


def _rows_scale(layer: Any, n: int) -> Tensor:
    s = layer._buffers[packed.PREFIX + "scale"].float()
    return s.expand(n) if s.numel() == 1 else s


class Int8Kernel(Kernel):
    """``aten._weight_int8pack_mm``: int8 weights [N, K], float scales per output channel."""

    name = "int8"
    buffers = ("qweight_int8",)

    @staticmethod
    def fits(layer: Any) -> bool:
        """True when the layer's weight is symmetric int8 per channel (axis 0) or per tensor."""
        m = layer._qmeta
        g = m.granularity
        return (_has("_weight_int8pack_mm") and isinstance(m.fmt, Uniform) and m.fmt.bits == 8 and m.fmt.signed
                and m.fmt.qmin == -128 and len(m.shape) == 2 and packed.PREFIX + "zero_point" not in layer._buffers
                and (g.kind == "tensor" or (g.kind == "channel" and g.axis in (0, -2))))

    def pack(self, layer: Any) -> None:
        """int8 values = codes - 128: the same bytes with the top bit flipped."""
        codes = layer._buffers.pop(packed.PREFIX + "codes")
        layer.register_buffer("qweight_int8", (codes ^ 0x80).view(torch.int8).reshape(layer._qmeta.shape))

    def codes(self, layer: Any) -> Tensor:
        """The uint8 codes (value + 128)."""
        return layer._buffers["qweight_int8"].reshape(-1).view(torch.uint8) ^ 0x80

    def run(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """``x @ (int8 W).T * scale + bias`` by the int8 weight-only kernel."""
        w = layer._buffers["qweight_int8"]
        s = _rows_scale(layer, w.shape[0]).to(x.dtype)
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), w, s).reshape(*x.shape[:-1], w.shape[0])
        return y if bias is None else y + bias.to(y.dtype)


def _unpack_int4(p: Tensor, n: int, k: int, layout: tuple[str, int]) -> Tensor:
    """Codes [N, K] (uint8) from the CPU int4pack layout: blocks of B rows, K, B/2 bytes each."""
    kind, b = layout
    t = p.reshape(n // b, k, b // 2)
    lo, hi = t & 15, t >> 4
    if kind == "pairs":  # rows 2j, 2j+1 share byte j (the portable kernel)
        rows = torch.stack([lo, hi], -1).reshape(n // b, k, b)
    else:  # rows j, j + B/2 share byte j (the vectorised kernels)
        rows = torch.cat([lo, hi], -1)
    return rows.permute(0, 2, 1).reshape(n, k)


_INT4_LAYOUTS = (("halves", 64), ("halves", 32), ("pairs", 32))  # as seen under avx512, avx2, default


class Int4Kernel(Kernel):
    """``aten._weight_int4pack_mm_for_cpu``: int4 codes in the kernel's layout, group-wise scales and zeros."""

    name = "int4"
    buffers = ("qweight_int4pack",)

    def __init__(self) -> None:
        self.layout: tuple[str, int] | None = None

    @staticmethod
    def fits(layer: Any) -> bool:
        """True for a 4-bit uniform weight [N, K] with groups of 32..256 inside rows and N a multiple of 32."""
        m = layer._qmeta
        g = m.granularity
        return (_has("_weight_int4pack_mm_for_cpu") and isinstance(m.fmt, Uniform) and m.fmt.bits == 4
                and len(m.shape) == 2 and g.kind == "group" and g.size in (32, 64, 128, 256)
                and m.shape[1] % g.size == 0 and m.shape[0] % 32 == 0 and m.shape[1] % 16 == 0)

    def pack(self, layer: Any) -> None:
        """Convert to the kernel's layout; keep it only if we can read the codes back (the layout is ISA-dependent)."""
        n, k = layer._qmeta.shape
        codes = layer._buffers[packed.PREFIX + "codes"]
        c = packed.qtensor_of(layer).codes().reshape(n, k)
        p = torch.ops.aten._convert_weight_to_int4pack_for_cpu(c.to(torch.int32), 1)
        for layout in _INT4_LAYOUTS:
            if n % layout[1] == 0 and torch.equal(_unpack_int4(p, n, k, layout), c):
                self.layout = layout
                break
        else:
            raise ValueError("this CPU's int4pack layout is unknown to lowbit; the layer keeps the exact path")
        del layer._buffers[packed.PREFIX + "codes"], codes
        layer.register_buffer("qweight_int4pack", p)

    def codes(self, layer: Any) -> Tensor:
        """The generic bit-packed codes (two a byte, low nibble first)."""
        from ..packing import pack

        n, k = layer._qmeta.shape
        assert self.layout is not None
        return pack(_unpack_int4(layer._buffers["qweight_int4pack"], n, k, self.layout).reshape(-1), 4, check=False)

    def scales_and_zeros(self, layer: Any, dtype: torch.dtype) -> Tensor:
        """[K/group, N, 2]: the kernel computes ``(code - 8) * scale + zero``."""
        m = layer._qmeta
        n, k = m.shape
        s = layer._buffers[packed.PREFIX + "scale"].float().reshape(n, k // m.granularity.size)
        zp = layer._buffers.get(packed.PREFIX + "zero_point")
        # level = code + qmin; w = (level - zp) * s = (code - 8) * s + (8 + qmin - zp) * s
        off = 8 + m.fmt.qmin - (zp.float().reshape(s.shape) if zp is not None else 0.0)
        z = off * s if (zp is not None or m.fmt.qmin != -8) else torch.zeros_like(s)
        return torch.stack([s, z], -1).transpose(0, 1).contiguous().to(dtype)

    def run(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """``x @ W.T + bias`` by the int4 group-wise kernel."""
        m = layer._qmeta
        n, k = m.shape
        sz = self.scales_and_zeros(layer, x.dtype)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, k), layer._buffers["qweight_int4pack"], m.granularity.size, sz)
        y = y.reshape(*x.shape[:-1], n)
        return y if bias is None else y + bias.to(y.dtype)


def kernel_for(layer: Any) -> Kernel | None:
    """A kernel for a converted ``QuantLinear`` (packed into its layout), or None where none fits."""
    if layer._qmeta is None or getattr(layer, "kernel", None) is not None:
        return getattr(layer, "kernel", None)
    for cls in (Int8Kernel, Int4Kernel):
        if cls.fits(layer):
            kern = cls()
            try:
                kern.pack(layer)
            except (ValueError, RuntimeError):
                return None
            return kern
    return None


def _time(fn: Callable[[], Any], reps: int = 5) -> float:
    fn()  # warm-up: first calls allocate and pick code paths
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def choice(kernel: Kernel, n: int, k: int, dtype: torch.dtype, rows: int, layer: Any) -> bool:
    """True when ``kernel`` beats decode + ``F.linear`` for this shape and dtype (measured once per process)."""
    batch = "1" if rows <= 1 else "many"
    key = (kernel.name, n, k, str(dtype).replace("torch.", ""), batch)
    hit = _TABLE.get(key)
    if hit is None:
        x = torch.randn(1 if batch == "1" else 32, k).to(dtype)
        t_kernel = _time(lambda: kernel.run(layer, x, None))
        t_exact = _time(lambda: F.linear(x, packed.dequantize(layer).to(dtype)))
        hit = _TABLE[key] = t_kernel < t_exact
    return hit


def measured_table() -> dict[tuple[str, int, int, str, str], bool]:
    """The choices measured so far in this process: (kernel, N, K, dtype, batch) -> kernel wins."""
    return dict(_TABLE)
