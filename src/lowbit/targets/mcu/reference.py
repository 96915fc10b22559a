"""NumPy integer reference: the exact integer arithmetic of the generated C code, vectorised over a batch.

Every intermediate is computed in int64 and checked to lie in int32 (where C keeps it),
so an overflow the export's bounds missed shows up here as an ``OverflowError``
instead of silently differing from C. Dot products go through float64 BLAS, which
is exact for integers below 2^53 (the bounds keep them below 2^31).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from .lower import INT32_MAX, AddOp, ComputeOp, IntProgram, PoolOp
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


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """[N, C, H, W] -> [N, C, oh, ow, kh, kw] (a view): the input window of every output position."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    win = np.lib.stride_tricks.sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, : out_hw[0], : out_hw[1]]


def _im2col(x: np.ndarray, op: ComputeOp) -> np.ndarray:
    """[N, C, H, W] -> [N, oh*ow, C, kh*kw] in (c, ky, kx) order, zero padding."""
    pt, pl, pb, pr = op.pads
    if pt or pl or pb or pr:
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = _windows(x, op.kernel, op.stride, op.dilation, op.out_shape[1:])  # N, C, oh, ow, kh, kw
    n, c, oh, ow, kh, kw = win.shape
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, oh * ow, c, kh * kw)


def _conv(op: ComputeOp, a: np.ndarray) -> np.ndarray:
    """``acc`` [N, cout, P] of a (grouped) convolution: group g's rows read input channels g*cin/groups.."""
    n = a.shape[0]
    cols = _im2col(a.reshape(n, *op.in_shape), op)
    p, cin = cols.shape[1], cols.shape[2]
    g = op.groups
    if g == 1:
        return _dot(op, cols.reshape(n * p, -1)).reshape(n, p, op.cout).transpose(0, 2, 1)
    cpg, opg = cin // g, op.cout // g
    if op.kind != "pt":  # all groups at once (depthwise: 64 tiny dot products per position)
        x = cols.reshape(n * p, g, cpg * cols.shape[3]).astype(np.float64)
        w = (op.codes if op.affine else op.values).reshape(g, opg, -1).astype(np.float64)
        raw = np.rint(np.einsum("mgk,gok->mgo", x, w)).astype(np.int64).reshape(n, p, op.cout)
        if op.affine:
            _check(op.name, "sum(a * code)", raw)
            sumx = np.repeat(x.sum(axis=2).astype(np.int64), opg, axis=1).reshape(n, p, op.cout)
            _check(op.name, "off * sum(a)", op.off * sumx)
            raw = op.off * sumx + op.step * raw
        _check(op.name, "the accumulator", raw)
        return raw.transpose(0, 2, 1)
    acc = np.empty((n, op.cout, p), dtype=np.int64)
    for k in range(g):
        rows = slice(k * opg, (k + 1) * opg)
        sub = dataclasses.replace(op, codes=op.codes[rows], values=op.values[rows])
        part = cols[:, :, k * cpg : (k + 1) * cpg].reshape(n * p, -1)
        acc[:, rows] = _dot(sub, part).reshape(n, p, opg).transpose(0, 2, 1)
    return acc


def _pool(op: PoolOp, a: np.ndarray) -> np.ndarray:
    """Max or average pooling on integers [N, C, H, W], as the C loop does it."""
    c, oh, ow = op.out_shape
    win = _windows(a, op.kernel, op.stride, (1, 1), (oh, ow))
    if op.kind == "max":
        return win.max(axis=(4, 5))
    total = win.sum(axis=(4, 5), dtype=np.int64)
    _check(op.name, "sum * m", total * op.mult)
    return np.clip(round_shift(total * op.mult, op.shift), op.lo, op.hi)


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
    # every sample is independent: chunks bound the im2col memory of large inputs
    chunk = max(1, (1 << 24) // max(1, _largest_cols(program)))
    if n > chunk:
        return np.concatenate([_run(program, a[i : i + chunk]) for i in range(0, n, chunk)])
    return _run(program, a)


def _largest_cols(program: IntProgram) -> int:
    """Integers in the largest im2col matrix of one sample."""
    return max([o.positions * o.n * o.groups if o.op == "conv" else o.n for o in program.compute_ops], default=1)


def _run(program: IntProgram, a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    x_in = a = a.reshape(n, *program.input_shape)
    dcum = np.zeros(n, dtype=np.int64)
    outs: list[np.ndarray] = []  # every op's output (graph programs read earlier ones)
    for op in program.ops:
        if op.src is not None:
            a = x_in if op.src[0] < 0 else outs[op.src[0]]
        if isinstance(op, AddOp):
            b = x_in if op.src[1] < 0 else outs[op.src[1]]
            y = a.reshape(n, -1) * op.ma + b.reshape(n, -1) * op.mb
            _check(op.name, "a * ma + b * mb", y)
            a = np.clip(round_shift(y, op.shift), op.lo, op.hi).reshape((n,) + tuple(op.shape))
            outs.append(a)
            continue
        if isinstance(op, PoolOp):
            a = _pool(op, a.reshape(n, *op.in_shape))
            outs.append(a)
            continue
        if op.op == "dense":
            acc = _dot(op, a.reshape(n, -1))  # [N, cout]
        else:
            acc = _conv(op, a)  # [N, cout, P]
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
        outs.append(a)
    raise AssertionError("program has no final layer")  # pragma: no cover


def predict(program: IntProgram, x: "np.ndarray | Tensor") -> np.ndarray:
    """Class predictions for float inputs [N, *input_shape] (quantized, then run in integers)."""
    return run(program, program.quantize_input(x)).argmax(axis=1)


def accuracy(program: IntProgram, x: "np.ndarray | Tensor", y: "np.ndarray | Tensor") -> float:
    """Top-1 accuracy in percent of the integer model on float inputs ``x`` with labels ``y``."""
    labels = np.asarray(y).reshape(-1)
    return float((predict(program, x) == labels).mean() * 100.0)
