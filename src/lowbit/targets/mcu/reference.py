"""NumPy integer reference: the exact integer arithmetic of the generated C code, vectorised over a batch.

Every intermediate is computed in int64 and checked to lie in int32 (where C keeps it),
so an overflow the export's bounds missed shows up here as an ``OverflowError``
instead of silently differing from C. Dot products go through float64 BLAS, which
is exact for integers below 2^53 (the bounds keep them below 2^31).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .lower import INT32_MAX, ComputeOp, IntProgram, PoolOp
from .pairs import lut_dot

__all__ = ["run", "predict", "accuracy", "round_shift"]

_INT32_MIN = -(2**31)


def round_shift(y: np.ndarray, s: "int | np.ndarray") -> np.ndarray:
    """``round(y / 2^s)`` (half up) as C computes it: ``(y >> s) + ((y >> (s - 1)) & 1)``, ``y`` for s = 0."""
    s = np.asarray(s, dtype=np.int64)
    up = np.where(s > 0, (y >> np.maximum(s - 1, 0)) & 1, 0)
    return (y >> s) + up


def _check(op: str, what: str, v: np.ndarray) -> None:
    if v.size and (int(v.max()) > INT32_MAX or int(v.min()) < _INT32_MIN):
        raise OverflowError(f"layer {op!r}: {what} leaves int32 (the export's overflow bound is wrong)")


def _matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.rint(a.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int64)


def _exact_products(op: ComputeOp) -> bool:
    """True when ``table[x - pt_lo][code] == x * w(code)`` for every code the layer uses."""
    assert op.pt_table is not None
    d = np.unique(op.values - op.codes)
    if d.size != 1:
        return False
    used = np.unique(op.codes)
    rows = np.arange(op.pt_lo, op.pt_lo + op.pt_table.shape[0])[:, None]
    return bool(np.array_equal(op.pt_table[:, used], rows * (used + d[0])[None, :]))


def _table_dot(op: ComputeOp, a: np.ndarray) -> np.ndarray:
    """Sum of product-table look-ups, as the C kernel does it: the pairs' one :func:`lut_dot` (chunks bound the gather)."""
    assert op.pt_table is not None
    table = torch.from_numpy(op.pt_table)  # row x - pt_lo, column code; rows are pt_stride long
    codes = torch.from_numpy(op.codes)[None, :, :]
    out = np.empty((a.shape[0], op.cout), dtype=np.int64)
    chunk = max(1, (1 << 22) // max(1, op.cout * op.n))
    for i in range(0, a.shape[0], chunk):
        rows = torch.from_numpy(a[i : i + chunk, None, :] - op.pt_lo)
        # int64 sums: an accumulator leaving int32 must show up in _check, not wrap
        out[i : i + chunk] = lut_dot(rows, codes, table, dtype=torch.int64).numpy()
    return out


def _dot(op: ComputeOp, a: np.ndarray) -> np.ndarray:
    """``acc`` [rows, cout] for integer input rows [rows, n], as the C kernels compute it."""
    if op.kind == "pt":
        if _exact_products(op) and a.size and a.min() >= op.pt_lo and a.max() < op.pt_lo + op.pt_table.shape[0]:
            acc = _matmul(a, op.values)  # a table of exact products sums to the dot product: the fast path
        else:
            acc = _table_dot(op, a)
    elif op.affine:
        raw = _matmul(a, op.codes)
        _check(op.name, "sum(a * code)", raw)
        sumx = a.sum(axis=1, keepdims=True)
        _check(op.name, "off * sum(a)", op.off * sumx)
        acc = op.off * sumx + op.step * raw
    else:  # i8 values, or l4 table values
        acc = _matmul(a, op.values)
    _check(op.name, "the accumulator", acc)
    return acc


def _im2col(x: np.ndarray, pad: int) -> np.ndarray:
    """[N, C, H, W] -> [N, oh*ow, C*9] in (c, ky, kx) order, zero padding."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # N, C, oh, ow, 3, 3
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, oh * ow, c * 9)


def _bias_term(op: ComputeOp, dcum: np.ndarray) -> np.ndarray:
    """Per sample [N, cout]: ``B`` in the units the dynamic shifts left the input in."""
    b = op.bias[None, :].astype(np.int64)
    d = dcum[:, None]
    down = round_shift(b, np.clip(d, 0, 31))
    up = b * (np.int64(1) << np.clip(-d, 0, 31))
    return np.where(d >= 0, down, up)


def run(program: IntProgram, x: "np.ndarray | Tensor") -> np.ndarray:
    """Integer logits [N, num_outputs] (int32) for integer inputs [N, input_size] (from ``quantize_input``)."""
    a = np.asarray(x, dtype=np.int64)
    n = a.shape[0]
    a = a.reshape(n, -1)
    if a.shape[1] != program.input_size:
        raise ValueError(f"x must hold {program.input_size} integers per input, got {a.shape[1]}")
    if a.size and (a.min() < program.input_lo or a.max() > program.input_hi):
        raise ValueError(f"x must lie in {program.input_lo}..{program.input_hi} (use program.quantize_input)")
    a = a.reshape(n, *program.input_shape)
    dcum = np.zeros(n, dtype=np.int64)
    for op in program.ops:
        if isinstance(op, PoolOp):
            c, oh, ow = op.out_shape
            a = a[:, :, : 2 * oh, : 2 * ow].reshape(n, c, oh, 2, ow, 2).max(axis=(3, 5))
            continue
        if op.op == "dense":
            acc = _dot(op, a.reshape(n, -1))  # [N, cout]
        else:
            cols = _im2col(a.reshape(n, *op.in_shape), op.pad)
            p = cols.shape[1]
            acc = _dot(op, cols.reshape(n * p, -1)).reshape(n, p, op.cout).transpose(0, 2, 1)  # [N, cout, P]
        mult = op.mult.reshape((1, -1) + (1,) * (acc.ndim - 2))
        bterm = _bias_term(op, dcum) if program.dynamic else np.broadcast_to(op.bias[None, :], (n, op.cout))
        bterm = bterm.reshape(bterm.shape + (1,) * (acc.ndim - 2))
        _check(op.name, "acc * M", acc * mult)
        y = acc * mult + bterm
        _check(op.name, "acc * M + B", y)
        if op.last:
            return y.reshape(n, -1).astype(np.int32)
        if program.dynamic:
            flat = y.reshape(n, -1)
            m = flat.max(axis=1) if op.out_lo >= 0 else np.abs(flat).max(axis=1)
            s = np.maximum(0, op.shift - program.headroom - dcum)
            for _ in range(32):  # the C loop: shift until the largest output fits
                s = s + (((m >> np.minimum(s, 31)) > op.out_hi) & (s < 31))
            dcum = dcum + s - op.shift
            sh = s.reshape((n,) + (1,) * (y.ndim - 1))
        else:
            sh = op.shift
        a = np.clip(round_shift(y, sh), op.out_lo, op.out_hi)
        a = a.reshape((n,) + tuple(op.out_shape))
    raise AssertionError("program has no final layer")  # pragma: no cover


def predict(program: IntProgram, x: "np.ndarray | Tensor") -> np.ndarray:
    """Class predictions for float inputs [N, *input_shape] (quantized, then run in integers)."""
    return run(program, program.quantize_input(x)).argmax(axis=1)


def accuracy(program: IntProgram, x: "np.ndarray | Tensor", y: "np.ndarray | Tensor") -> float:
    """Top-1 accuracy in percent of the integer model on float inputs ``x`` with labels ``y``."""
    labels = np.asarray(y).reshape(-1)
    return float((predict(program, x) == labels).mean() * 100.0)
