"""PyTorch's low-bit matmul kernels for converted linears, chosen per shape and dtype by measurement.

``lowbit.convert(model, kernels="auto")`` gives each eligible ``QuantLinear`` a kernel that
keeps the weight in the kernel's own packed layout (in place of the generic codes, so the
memory stays the packed size):

- ``int8``: ``aten._weight_int8pack_mm`` — int8 symmetric weights, one scale per output
  channel (or per tensor);
- ``int4``: ``aten._weight_int4pack_mm_for_cpu`` — int4 weights, group size 32..256 along
  the input dimension (signed: zero 0; unsigned with zero points: ``(8 - zp) * scale``);
- ``int8x8``: ``torch._int_mm`` for ``w8,a8`` layers — int8 activation codes times int8
  weight codes with int32 accumulation, then one float rescale (see :class:`Int8x8Kernel`).

Each kernel offers several *paths* for a call: the kernel itself; for float32 activations, only
after :func:`allow_bf16_activations`, the kernel on a bfloat16 cast of ``x`` (``"<kernel>@bf16"``,
held to the looser bfloat16 bound below);
and ``"decode"``, which decodes the kernel's own layout a block of rows at a time into a small
scratch buffer (about 1 MB, never a whole float weight) and multiplies block by block. A
table measured once per process for (kernel, N, K, activation dtype, batch 1 or more) picks
the fastest — see :func:`path_for`. The PyTorch docs and our measurements disagree with guesses (the
int8 kernel is ~3x *slower* than a float32 matvec with float32 activations, faster with
bfloat16), so nothing here is assumed.

Accuracy (a kernel is not bit-equal to the fake-quantized layer: it scales after, not
before, the dot product and accumulates in its own order). For output ``i`` with
``a_i = sum_k |x_k| |W_ik|`` (``W`` the dequantized weight), both results are sums of K
rounded products, so ``|y_i - r_i| <= c * eps * a_i`` with ``c`` growing as ``sqrt(K)``
for random-sign rounding errors (``K`` in the worst case); bfloat16 activations add the
rounding of the scales and of the output (``2 eps``). The tests hold the kernels to
``|y_i - r_i| <= (2 + 2 sqrt(K)) * eps(dtype) * a_i`` against a float64 reference; the
``@bf16`` paths to the same bound with ``eps(bfloat16)``. ``"decode"`` builds each block of the
weight exactly as ``QTensor.dequantize()`` does (bit-equal), only the matmul is blocked.

The integer path (``int8x8``) is exact in its integer part: its int32 accumulator equals the
integer dot product of the activation and weight codes bit for bit. The float output
``acc * (s_x * s_w) + b`` then rounds three times, so ``|y_i - r_i| <= 2 eps (a_i + |b_i|)``
against the exact real value ``r_i`` of the fake-quantized layer — tighter than the fake-quantized
layer's own float32 sum, which it therefore matches within the kernel bound, not bit for bit.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..formats import Uniform
from . import packed

__all__ = ["Kernel", "Int8Kernel", "Int4Kernel", "Int8x8Kernel", "kernel_for", "choice", "path_for", "measured_table",
           "allow_bf16_activations", "KERNEL_MODES"]

KERNEL_MODES = ("exact", "auto")
_TABLE: dict[tuple[str, int, int, str, str], str] = {}  # (kernel, N, K, dtype, batch) -> fastest path's name
_BLOCK_BYTES = 1 << 20  # the "decode" path's scratch: ~1 MB of float weight at a time stays in cache


def _has(op: str) -> bool:
    return hasattr(torch.ops.aten, op)


class Kernel:
    """A low-bit matmul for one converted linear; holds no tensors (they are the layer's buffers)."""

    name = "exact"
    buffers: tuple[str, ...] = ()
    block = 1  # the "decode" path decodes whole multiples of this many rows
    # float32 activations through the kernel in bfloat16: a looser bound (eps of bfloat16, ~1e-2
    # relative) that can flip near-tied predictions, so only on request (allow_bf16_activations)
    allow_bf16 = False

    def __call__(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """``layer``'s output for ``x`` by the path the measured table says is fastest."""
        if x.dtype in (torch.float32, torch.bfloat16) and x.device.type == "cpu":
            n, k = layer._qmeta.shape
            return self.paths(x.dtype)[path_for(self, n, k, x.dtype, x.numel() // max(1, k), layer)](layer, x, bias)
        return F.linear(x, packed.dequantize(layer), bias)  # other dtypes and devices: the exact path

    def paths(self, dtype: torch.dtype) -> dict[str, Callable[[Any, Tensor, Tensor | None], Tensor]]:
        """The candidate paths for activations of ``dtype``, by name (the table measures each)."""
        out: dict[str, Callable[[Any, Tensor, Tensor | None], Tensor]] = {self.name: self.run}
        if dtype == torch.float32 and self.allow_bf16:
            out[self.name + "@bf16"] = self.run_bf16
        out["decode"] = self.run_decode
        return out

    def run(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """The kernel's output (always the kernel, no table)."""
        raise NotImplementedError

    def run_bf16(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """The kernel on a bfloat16 cast of float32 ``x``, back in float32 (the bfloat16 bound holds)."""
        return self.run(layer, x.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)).to(x.dtype)

    def run_decode(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """Decode the kernel's layout a block of rows at a time (bit-equal to ``dequantize``) and multiply per block."""
        n, k = layer._qmeta.shape
        x2 = x.reshape(-1, k)
        rows = max(self.block, (_BLOCK_BYTES // (4 * k)) // self.block * self.block)
        scratch = torch.empty(min(rows, n), k)
        yt = torch.empty(n, x2.shape[0], dtype=x.dtype)
        xt = x2.t()
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            w = self.decode_rows(layer, r0, r1, scratch[: r1 - r0])
            torch.mm(w if x.dtype == torch.float32 else w.to(x.dtype), xt, out=yt[r0:r1])
        y = yt.t().contiguous().reshape(*x.shape[:-1], n)
        return y if bias is None else y + bias.to(y.dtype)

    def decode_rows(self, layer: Any, r0: int, r1: int, out: Tensor) -> Tensor:
        """Rows ``r0:r1`` of the float32 weight, written into ``out`` (exactly ``dequantize()``'s values)."""
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

    def decode_rows(self, layer: Any, r0: int, r1: int, out: Tensor) -> Tensor:
        """``int8 value * scale`` for rows ``r0:r1``: the level is the int8 value (qmin -128, no zero point)."""
        out.copy_(layer._buffers["qweight_int8"][r0:r1])
        return out.mul_(_rows_scale(layer, layer._qmeta.shape[0])[r0:r1, None])

    def run(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """``x @ (int8 W).T * scale + bias`` by the int8 weight-only kernel."""
        w = layer._buffers["qweight_int8"]
        s = layer._buffers[packed.PREFIX + "scale"]  # already x's dtype after model.to(dtype): no pass then
        s = (s.expand(w.shape[0]) if s.numel() == 1 else s).to(x.dtype)
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), w, s).reshape(*x.shape[:-1], w.shape[0])
        return y if bias is None else y + bias.to(y.dtype)


@functools.lru_cache(maxsize=None)
def int_mm_exact(device: str = "cpu") -> bool:
    """Whether ``torch._int_mm`` on ``device`` equals the int64 product, probed once per process.

    Not a given on the CPU: without AVX-512 VNNI (``ONEDNN_MAX_CPU_ISA=AVX2`` or ``SSE41``, or such a CPU)
    torch 2.13's oneDNN int8 GEMM saturates pairwise int16 sums, and random int8 inputs come back wrong.
    The probe multiplies random codes and the extreme rows (all -128, all 127) and compares exactly."""
    if not hasattr(torch, "_int_mm"):
        return False
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (24, 64), generator=g, dtype=torch.int8)
    a[0], a[1] = -128, 127
    b = torch.randint(-128, 128, (64, 32), generator=g, dtype=torch.int8)
    b[:, 0], b[:, 1] = -128, 127
    try:
        got = torch._int_mm(a.to(device), b.to(device)).cpu().long()
    except (RuntimeError, AssertionError):  # no such device in this build, or the op refuses it
        return False
    return torch.equal(got, a.long() @ b.long())


def _int_mm_ok(m: int, k: int, n: int, device: torch.device) -> bool:
    """Where ``torch._int_mm`` runs and is exact: on CUDA K and N multiples of 8 (M > 16 is met by padding
    rows), on the CPU any shape — and only where :func:`int_mm_exact` holds for the device."""
    shape_ok = device.type == "cpu" or (k % 8 == 0 and n % 8 == 0)
    return shape_ok and int_mm_exact(str(device))


class Int8x8Kernel(Int8Kernel):
    """``torch._int_mm`` for ``w8,a8`` layers: int8 activation codes x int8 weights, int32 accumulation.

    The activation quantizer (8-bit, per tensor, scale ``s_x``, zero point ``z``, levels
    ``qmin..qmax``) has already run when the kernel sees ``x``: each value is ``(l - z) * s_x``.
    The kernel recovers ``v = l - z`` by rounding ``x / s_x`` (exact: ``|v| <= 255`` and the
    float32 error is ~1e-5), feeds ``a = l - qmin - 128`` (in -128..127) to ``_int_mm`` and adds
    ``(qmin + 128 - z) * sum_k W`` so the int32 accumulator is ``sum_k v_k W_k`` exactly.
    """

    name = "int8x8"
    buffers = ("qweight_int8", "qweight_rowsum")

    @staticmethod
    def fits(layer: Any) -> bool:
        """True for an int8-per-channel weight behind a frozen 8-bit per-tensor input quantizer, K <= 32768."""
        iq = getattr(layer, "input_quant", None)
        if iq is None or iq.learned or not Int8Kernel.fits(layer):
            return False
        q = iq.q
        return (isinstance(q.fmt, Uniform) and q.fmt.bits == 8 and q.granularity.kind == "tensor" and q.frozen
                and layer._qmeta.shape[1] <= 32768 and hasattr(torch, "_int_mm"))  # |acc| < 2^31 up to this K

    def pack(self, layer: Any) -> None:
        """The int8 layout and each row's code sum (int32, not saved: rebuilt from the codes)."""
        super().pack(layer)
        layer.register_buffer("qweight_rowsum", layer._buffers["qweight_int8"].sum(1, dtype=torch.int32), persistent=False)

    def paths(self, dtype: torch.dtype) -> dict[str, Callable[[Any, Tensor, Tensor | None], Tensor]]:
        """float32: the integer kernel or decode; other dtypes decode (their quantized x does not round back exactly)."""
        out: dict[str, Callable[[Any, Tensor, Tensor | None], Tensor]] = {"decode": self.run_decode}
        if dtype == torch.float32:
            out = {self.name: self.run, **out}
        return out

    def _act(self, layer: Any) -> tuple[Tensor, int, int]:
        q = layer.input_quant.q
        s, zp = q.compute_scale(torch.empty(0))
        z = int(zp.reshape(-1)[0]) if zp is not None and zp.numel() else 0
        return s.reshape(-1)[0].float(), z, q.fmt.qmin

    def accumulate(self, layer: Any, x: Tensor) -> Tensor:
        """The int32 accumulator ``sum_k (l_k - z) W_nk`` for the already fake-quantized input ``x`` [..., K]."""
        s, z, qmin = self._act(layer)
        n, k = layer._qmeta.shape
        x2 = x.reshape(-1, k)
        v = torch.round(x2.float() / s)  # l - z, exactly
        a = (v + float(z - qmin - 128)).to(torch.int8)
        m = a.shape[0]
        if not _int_mm_ok(m, k, n, a.device):
            w = layer._buffers["qweight_int8"]
            return (a.long() @ w.long().t() + (qmin + 128 - z) * layer._buffers["qweight_rowsum"].long()).to(torch.int32)
        if a.device.type == "cuda" and m <= 16:  # CUDA's _int_mm wants more than 16 rows: pad, then drop them
            a = torch.cat([a, a.new_zeros(17 - m, k)])
        acc = torch._int_mm(a, layer._buffers["qweight_int8"].t())[:m]
        return acc.add_(layer._buffers["qweight_rowsum"] * (qmin + 128 - z))

    def run(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        """``acc * (s_x * s_w) + bias`` from the integer accumulator."""
        n = layer._qmeta.shape[0]
        s, _, _ = self._act(layer)
        y = self.accumulate(layer, x).float().mul_(s * _rows_scale(layer, n)).reshape(*x.shape[:-1], n)
        return y if bias is None else y + bias.float()


def _int4_rows(p: Tensor, n: int, k: int, layout: tuple[str, int], b0: int = 0, b1: int | None = None) -> Tensor:
    """Codes of row blocks ``b0:b1`` ([rows, K], uint8) from the CPU int4pack layout: blocks of B rows, K, B/2 bytes."""
    kind, b = layout
    t = p.reshape(n // b, k, b // 2)[b0:b1]
    lo, hi = t & 15, t >> 4
    if kind == "pairs":  # rows 2j, 2j+1 share byte j (the portable kernel)
        rows = torch.stack([lo, hi], -1).reshape(t.shape[0], k, b)
    else:  # rows j, j + B/2 share byte j (the vectorised kernels)
        rows = torch.cat([lo, hi], -1)
    return rows.permute(0, 2, 1).reshape(-1, k)


def _unpack_int4(p: Tensor, n: int, k: int, layout: tuple[str, int]) -> Tensor:
    """Codes [N, K] (uint8) from the CPU int4pack layout."""
    return _int4_rows(p, n, k, layout)


_INT4_LAYOUTS = (("halves", 64), ("halves", 32), ("pairs", 32))  # as seen under avx512, avx2, default


_SZ = packed.PREFIX + "int4_sz"  # Int4Kernel's scales-and-zeros, kept in half-precision models
_HALF = (torch.bfloat16, torch.float16)


class Int4Kernel(Kernel):
    """``aten._weight_int4pack_mm_for_cpu``: int4 codes in the kernel's layout, group-wise scales and zeros."""

    name = "int4"
    buffers = ("qweight_int4pack",)

    def __init__(self) -> None:
        self.layout: tuple[str, int] | None = None

    def __call__(self, layer: Any, x: Tensor, bias: Tensor | None) -> Tensor:
        sz = layer._buffers.get(_SZ)
        s = layer._buffers[packed.PREFIX + "scale"]
        if sz is not None and (s.dtype not in _HALF or sz.dtype != s.dtype):
            del layer._buffers[_SZ]  # the model left half precision: whatever path runs, the cache is dead memory
        return super().__call__(layer, x, bias)

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
                self.block = layout[1]
                break
        else:
            raise ValueError("this CPU's int4pack layout is unknown to lowbit; the layer keeps the exact path")
        del layer._buffers[packed.PREFIX + "codes"], codes, c
        layer.register_buffer("qweight_int4pack", p)

    def codes(self, layer: Any) -> Tensor:
        """The generic bit-packed codes (two a byte, low nibble first)."""
        from ..packing import pack

        n, k = layer._qmeta.shape
        assert self.layout is not None
        return pack(_unpack_int4(layer._buffers["qweight_int4pack"], n, k, self.layout).reshape(-1), 4, check=False)

    def decode_rows(self, layer: Any, r0: int, r1: int, out: Tensor) -> Tensor:
        """``(code + qmin - zp) * scale`` for rows ``r0:r1`` straight from the kernel layout (no round trip)."""
        m = layer._qmeta
        n, k = m.shape
        g = m.granularity.size
        assert self.layout is not None
        b = self.layout[1]
        out.copy_(_int4_rows(layer._buffers["qweight_int4pack"], n, k, self.layout, r0 // b, r1 // b))
        s = layer._buffers[packed.PREFIX + "scale"].float().reshape(n, k // g)[r0:r1, :, None]
        v = out.view(r1 - r0, k // g, g)
        zp = layer._buffers.get(packed.PREFIX + "zero_point")
        if zp is not None:  # level - zp, an exact small integer in float32, as dequantize computes it
            v.add_(m.fmt.qmin - zp.float().reshape(n, k // g)[r0:r1, :, None])
        elif m.fmt.qmin:
            v.add_(float(m.fmt.qmin))
        v.mul_(s)
        return out

    def scales_and_zeros(self, layer: Any, dtype: torch.dtype) -> Tensor:
        """[K/group, N, 2] for the kernel, which computes ``(code - 8) * scale + zero``.

        Kept between calls only in a half-precision model (``model.to(torch.bfloat16)``, the
        kernel's fast dtype) as the non-persistent buffer ``qweight_int4_sz`` (not in the state
        dict or the file): 4 bytes a group on top of the 2-byte half scale, so a group-128 layer
        holds 0.547 bytes a weight instead of 0.531 (torchao's bfloat16 layer, which keeps the
        same tensor in place of a scale). Building it costs ~0.2 ms per 4096x11008 layer, the
        whole of a batch-1 bfloat16 call's margin against torchao. A float32 model builds it per
        call (its float32 kernel path is slow anyway) rather than keep 8 bytes a group: it stays
        7.5x smaller than float32.
        """
        scale = layer._buffers[packed.PREFIX + "scale"]
        if dtype != scale.dtype or dtype not in _HALF:  # (a stale cache is dropped in __call__, for every path)
            return self._scales_and_zeros(layer, dtype)
        key = (scale.data_ptr(), scale._version, dtype, scale.device)
        sz = layer._buffers.get(_SZ)
        if sz is None or getattr(self, "_sz_key", None) != key:  # a new or changed scale: .to(), load_state_dict
            sz = self._scales_and_zeros(layer, dtype)
            layer.register_buffer(_SZ, sz, persistent=False)
            self._sz_key = key
        return sz

    def _scales_and_zeros(self, layer: Any, dtype: torch.dtype) -> Tensor:
        m = layer._qmeta
        n, k = m.shape
        scale = layer._buffers[packed.PREFIX + "scale"]
        zp = layer._buffers.get(packed.PREFIX + "zero_point")
        # in as few passes as possible: under load each op costs a scheduling round, not just its arithmetic
        out = torch.zeros(k // m.granularity.size, n, 2, dtype=dtype)
        if zp is None and m.fmt.qmin == -8:  # signed int4: zero 0, one cast-and-transpose copy
            out[..., 0].copy_(scale.view(n, -1).t())
            return out
        s = scale.float().reshape(n, k // m.granularity.size)
        # level = code + qmin; w = (level - zp) * s = (code - 8) * s + (8 + qmin - zp) * s
        off = 8 + m.fmt.qmin - (zp.float().reshape(s.shape) if zp is not None else 0.0)
        out[..., 0].copy_(s.t())
        out[..., 1].copy_((off * s).t())
        return out

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
    for cls in (Int8x8Kernel, Int8Kernel, Int4Kernel):
        if cls.fits(layer):
            kern = cls()
            try:
                kern.pack(layer)
            except (ValueError, RuntimeError):
                return None
            return kern
    return None


def _time(fn: Callable[[], Any], reps: int = 3, give_up: float = float("inf")) -> float:
    t = time.perf_counter()
    fn()  # warm-up: first calls allocate and pick code paths
    best = time.perf_counter() - t
    if best > 4 * give_up:  # far slower than a path already measured even cold: not worth more calls
        return best
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def path_for(kernel: Kernel, n: int, k: int, dtype: torch.dtype, rows: int, layer: Any) -> str:
    """The fastest of ``kernel.paths(dtype)`` for this shape, dtype and batch (1 or more): measured once per process."""
    batch = "1" if rows <= 1 else "many"
    key = (kernel.name + ("+bf16" if kernel.allow_bf16 else ""), n, k, str(dtype).replace("torch.", ""), batch)
    hit = _TABLE.get(key)
    if hit is None:
        x = torch.randn(1 if batch == "1" else 32, k).to(dtype)
        if isinstance(kernel, Int8x8Kernel):  # the kernel sees quantized inputs: measure on one
            x = layer.input_quant(x)
        times: dict[str, float] = {}
        for name, fn in kernel.paths(dtype).items():  # the kernel first: the others give up against it
            times[name] = _time(lambda fn=fn: fn(layer, x, None), give_up=min(times.values(), default=float("inf")))
        hit = _TABLE[key] = min(times, key=times.__getitem__)
    return hit


def allow_bf16_activations(model: Any, allow: bool = True) -> int:
    """Let (or stop) each kernel of ``model`` run float32 activations in bfloat16 where faster; returns how many kernels."""
    if not isinstance(allow, bool):
        raise TypeError(f"allow must be a bool, got {type(allow).__name__}")
    ks = [m.kernel for m in model.modules() if isinstance(getattr(m, "kernel", None), Kernel)]
    for kern in ks:
        kern.allow_bf16 = allow
    return len(ks)


def choice(kernel: Kernel, n: int, k: int, dtype: torch.dtype, rows: int, layer: Any) -> bool:
    """True when one of ``kernel``'s own paths (not block decode) is the fastest for this shape and dtype."""
    return path_for(kernel, n, k, dtype, rows, layer) != "decode"


def measured_table() -> dict[tuple[str, int, int, str, str], str]:
    """The choices measured so far in this process: (kernel, N, K, dtype, batch) -> the fastest path's name."""
    return dict(_TABLE)
