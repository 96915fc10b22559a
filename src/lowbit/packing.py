"""Bit packing of integer codes.

Bit order (documented, and what the C and file targets read): the codes form
one little-endian bit stream. Code ``i`` occupies bits ``i*b .. i*b+b-1`` of
the stream, least significant bit first; stream bit ``k`` is bit ``k % 8`` of
byte ``k // 8``. For b in {1, 2, 4} code 0 sits in the low bits of byte 0.
Codes of 9..16 bits are stored as little-endian uint16 words.

Packing works on groups of 8 codes (8*b bits = b whole bytes), so it is a few
vectorised integer passes, never a Python loop over elements.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["pack", "unpack", "packed_nbytes"]


def _check(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in 1..16, got {bits!r}")


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that :func:`pack` returns for ``n`` codes of ``bits`` bits."""
    _check(bits)
    if bits > 8:
        return 2 * n
    return ((n + 7) // 8) * bits if bits not in (1, 2, 4, 8) else (n * bits + 7) // 8


def pack(codes: Tensor, bits: int, *, check: bool = True) -> Tensor:
    """Pack non-negative integer codes (< 2^bits) into a flat uint8 tensor.

    ``check=False`` skips the range check (one pass) for codes a format produced.
    """
    _check(bits)
    c = codes.reshape(-1)
    if c.is_floating_point():
        raise TypeError(f"codes must be an integer tensor, got {c.dtype}")
    if check and c.numel() and not (c.dtype == torch.uint8 and bits == 8):
        lo, hi = torch.aminmax(c)
        if int(lo) < 0 or int(hi) >= 2**bits:
            raise ValueError(f"codes must lie in [0, {2**bits - 1}] to pack at {bits} bits")
    if bits > 8:
        return c.to(torch.int32).to(torch.int16).view(torch.uint8).reshape(-1) if c.numel() else torch.empty(0, dtype=torch.uint8)
    if bits == 8:
        return c.to(torch.uint8)
    n = c.numel()
    if bits in (1, 2, 4):
        # `per` codes share a byte: OR strided slices, code j of a byte at bit j*bits.
        per = 8 // bits
        c = c.to(torch.uint8)
        if n % per:
            c = torch.nn.functional.pad(c, (0, (-n) % per))
        c = c.reshape(-1, per)
        out = c[:, 0] | (c[:, 1] << bits)
        for j in range(2, per):
            out |= c[:, j] << (j * bits)
        return out
    # 3, 5, 6, 7 bits: lay out the bit stream as [n, bits] bit planes (LSB
    # first) and let numpy pack it; padding to 8 codes keeps whole bytes.
    c = torch.nn.functional.pad(c.to(torch.uint8), (0, (-n) % 8))
    planes = torch.empty(c.numel(), bits, dtype=torch.uint8)
    for j in range(bits):
        planes[:, j] = (c >> j) & 1
    return torch.from_numpy(np.packbits(planes.numpy().reshape(-1), bitorder="little"))


def unpack(data: Tensor, bits: int, n: int) -> Tensor:
    """Unpack ``n`` codes of ``bits`` bits from a uint8 tensor made by :func:`pack`.

    Returns uint8 codes for ``bits <= 8`` and int32 codes above.
    """
    _check(bits)
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError("data must be a 1-D uint8 tensor")
    if data.numel() != packed_nbytes(n, bits):
        raise ValueError(
            f"packed data holds {data.numel()} bytes, but {n} codes of {bits} bits need {packed_nbytes(n, bits)}"
        )
    if bits > 8:
        return data.view(torch.int16).to(torch.int32) & 0xFFFF
    if bits == 8:
        return data.clone()
    mask = (1 << bits) - 1
    if bits in (1, 2, 4):
        per = 8 // bits
        out = torch.empty(data.numel(), per, dtype=torch.uint8)
        for j in range(per):
            out[:, j] = (data >> (j * bits)) & mask
        return out.reshape(-1)[:n]
    planes = torch.from_numpy(np.unpackbits(data.numpy(), bitorder="little")).reshape(-1, bits)
    out = planes[:, 0].clone()
    for j in range(1, bits):
        out |= planes[:, j] << j
    return out[:n]



__all__ += ["unpack_lookup"]

# Values per CPU chunk of unpack_lookup: a chunk's index temporaries stay in cache,
# so only the output is written to main memory, and each op stays under ATen's
# parallel grain (32768): a thread team per small op costs more than the op on a
# busy machine (measured 5-10x slower at 2^17), serial chunks do not.
_CHUNK = 1 << 15


def _byte_table(table: Tensor, bits: int) -> Tensor:
    # byte value -> the 8 // bits table entries its codes select, low code first;
    # rows of 1, 2, 4 or 8 bytes are viewed as one integer word so one gather moves a whole row
    per = 8 // bits
    b = torch.arange(256, device=table.device)
    rows = torch.stack([table[(b >> (j * bits)) & ((1 << bits) - 1)] for j in range(per)], dim=1)
    width = per * rows.element_size()
    word = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(width)
    return rows.view(word).reshape(256) if word is not None else rows.view(torch.int64)


def unpack_lookup(data: Tensor, bits: int, n: int, table: Tensor) -> Tensor:
    """``table[code]`` for the ``n`` codes of ``bits`` (<= 8) bits packed in ``data``, without an int64 code tensor.

    Equal to ``table[unpack(data, bits, n).long()]``; ``table`` is 1-D with at least ``2**bits`` entries.
    """
    _check(bits)
    if bits > 8:
        raise ValueError(f"bits must be at most 8 for a table look-up, got {bits}")
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError("data must be a 1-D uint8 tensor")
    if data.numel() != packed_nbytes(n, bits):
        raise ValueError(
            f"packed data holds {data.numel()} bytes, but {n} codes of {bits} bits need {packed_nbytes(n, bits)}"
        )
    if not isinstance(table, Tensor) or table.dim() != 1 or table.numel() < 2**bits:
        raise ValueError(f"table must be a 1-D tensor with at least {2**bits} entries")
    table = table[: 2**bits].to(data.device).contiguous()
    # one Python step per chunk on the CPU (cache-sized temporaries); one step on an accelerator
    step = _CHUNK if data.device.type == "cpu" else max(1, data.numel())
    if bits in (1, 2, 4, 8):
        per = 8 // bits
        words = _byte_table(table, bits)
        out = torch.empty((data.numel(),) + words.shape[1:], dtype=words.dtype, device=data.device)
        step = max(1, step // per)
        for s in range(0, data.numel(), step):
            torch.index_select(words, 0, data[s : s + step].to(torch.int32), out=out[s : s + step])
        return out.view(table.dtype).reshape(-1)[:n]
    # 3, 5, 6, 7 bits: 8 codes fill `bits` whole bytes; read them as one little-endian word
    groups = data.view(-1, bits)
    wide = torch.int32 if bits * 8 < 32 else torch.int64
    shifts = torch.arange(0, 8 * bits, bits, dtype=wide, device=data.device)
    place = torch.arange(0, 8 * bits, 8, dtype=wide, device=data.device)
    out = torch.empty(groups.shape[0], 8, dtype=table.dtype, device=data.device)
    step = max(1, step // 8)
    for s in range(0, groups.shape[0], step):
        word = (groups[s : s + step].to(wide) << place).sum(dim=1, dtype=wide)
        codes = (word[:, None] >> shifts) & ((1 << bits) - 1)
        torch.index_select(table, 0, codes.reshape(-1), out=out[s : s + step].view(-1))
    return out.reshape(-1)[:n]

# --------------------------------------------------------------------------- base-3 (trits)

__all__ += ["pack_trits", "unpack_trits", "packed_trits_nbytes"]

# Trit j of a byte has weight 3^j: the first code sits in the least significant
# digit, as code 0 sits in the low bits for the binary packing above.
_TRIT_WEIGHTS = (1, 3, 9, 27, 81)


def packed_trits_nbytes(n: int) -> int:
    """Bytes that :func:`pack_trits` returns for ``n`` ternary codes (5 per byte)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return (n + 4) // 5


def pack_trits(codes: Tensor) -> Tensor:
    """Pack ternary codes (0, 1, 2) five to a byte, base 3: ``byte = sum(code_j * 3^j)`` (1.6 bits a code)."""
    c = codes.reshape(-1)
    if c.is_floating_point():
        raise TypeError(f"codes must be an integer tensor, got {c.dtype}")
    if c.numel():
        lo, hi = torch.aminmax(c)
        if int(lo) < 0 or int(hi) > 2:
            raise ValueError("codes must lie in [0, 2] to pack as trits")
    c = torch.nn.functional.pad(c.to(torch.int16), (0, (-c.numel()) % 5)).reshape(-1, 5)
    w = torch.tensor(_TRIT_WEIGHTS, dtype=torch.int16, device=c.device)
    return (c * w).sum(dim=1).to(torch.uint8)


def unpack_trits(data: Tensor, n: int) -> Tensor:
    """Unpack ``n`` ternary codes (uint8, values 0..2) from bytes made by :func:`pack_trits`."""
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError("data must be a 1-D uint8 tensor")
    if data.numel() != packed_trits_nbytes(n):
        raise ValueError(f"packed data holds {data.numel()} bytes, but {n} trits need {packed_trits_nbytes(n)}")
    if data.numel() and int(data.max()) > 242:
        raise ValueError("data holds a byte above 242 = 3^5 - 1: not trit-packed")
    w = torch.tensor(_TRIT_WEIGHTS, dtype=torch.int16, device=data.device)
    digits = torch.div(data.to(torch.int16)[:, None], w, rounding_mode="floor") % 3
    return digits.reshape(-1)[:n].to(torch.uint8)
