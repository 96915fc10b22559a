"""ONNX forms of the tensor plumbing a transformer or RNN classifier's forward uses.

``x.shape`` / ``x.size()`` and their items (the batch size stays dynamic: it is read
with ``Shape`` at run time; other sizes are the traced ones), ``expand``,
``transpose`` / ``permute``, indexing (ints, slices, ``None``, ``...``; an item of
a layer's tuple output), ``mean``, ``F.gelu`` and ``F.softmax``.
"""
from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .onnx_ops_seq import gelu, reduce_mean

__all__ = ["Shape", "Dim", "tensor_op"]


@dataclass(frozen=True)
class Shape:
    """A traced ``x.shape``: the tensor it was read from and its traced sizes."""

    tensor: str
    sizes: tuple


@dataclass(frozen=True)
class Dim:
    """One size of a traced shape: dynamic when it is the batch dimension of a dynamic-batch graph."""

    tensor: str
    axis: int
    size: int


def _dim_tensor(ctx: Any, d: Any, base: str) -> str:
    """A 1-D int64 ONNX tensor holding the size ``d`` (an int or a Dim)."""
    g = ctx.g
    if isinstance(d, Dim) and d.axis == 0 and ctx.dynamic_batch:
        return g.op("Gather", [g.op("Shape", [d.tensor], base), g.const(f"{base}.axis", [0], np.int64)], base, axis=0)
    return g.const(f"{base}.size", [int(d.size if isinstance(d, Dim) else d)], np.int64)


def _rank(shape: tuple | None, base: str) -> int:
    if shape is None:
        raise ValueError(f"node {base!r}: needs a traced input shape")
    return len(shape)


def _index(ctx: Any, x: str, idx: Any, shape: tuple, base: str) -> str:
    """``x[idx]`` for ints, slices (step >= 1), None and Ellipsis."""
    g = ctx.g
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if sum(i is Ellipsis for i in items) > 1:
        raise ValueError(f"node {base!r}: an index with more than one '...'")
    if Ellipsis in items:
        k = items.index(Ellipsis)
        fill = len(shape) - sum(i is not None for i in items if i is not Ellipsis)
        items[k:k + 1] = [slice(None)] * fill
    axis = 0
    for it in items:
        if it is None:
            x = g.op("Unsqueeze", [x, g.const(f"{base}.axes", [axis], np.int64)], base)
            axis += 1
        elif isinstance(it, int) and not isinstance(it, bool):
            x = g.op("Gather", [x, g.const(f"{base}.index", np.int64(it))], base, axis=axis)  # drops the axis
        elif isinstance(it, slice):
            if not (it.start is None and it.stop is None and it.step is None):
                if any(v is not None and not isinstance(v, int) for v in (it.start, it.stop, it.step)) or (it.step or 1) < 1:
                    raise ValueError(f"node {base!r}: slice {it} has no ONNX form (int bounds, step >= 1)")
                lo = 0 if it.start is None else it.start
                hi = np.iinfo(np.int64).max if it.stop is None else it.stop
                x = g.op("Slice", [x, g.const(f"{base}.starts", [lo], np.int64), g.const(f"{base}.ends", [hi], np.int64),
                                   g.const(f"{base}.axes", [axis], np.int64), g.const(f"{base}.steps", [it.step or 1], np.int64)], base)
            axis += 1
        else:
            raise ValueError(f"node {base!r}: index {it!r} has no ONNX form (ints, slices, None, ...)")
    return x


def _dims(node: torch.fx.Node, name: str) -> Any:
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        return list(rest[0])
    return list(rest) if rest else node.kwargs.get(name)


def tensor_op(ctx: Any, node: torch.fx.Node, key: Any, env: dict, base: str, in_shape: tuple | None, out_shape: tuple | None) -> Any:
    """The ONNX form of one fx call node, or None when it is not one of these ops."""
    from .onnx_export import _arg_name

    g = ctx.g
    a0 = node.args[0] if node.args else None
    src = env.get(a0.name) if isinstance(a0, torch.fx.Node) else None
    if key is builtins.getattr and node.args[1] == "shape" or key == "size":
        shp = Shape(src, tuple(int(s) for s in in_shape or ()))
        d = node.args[1] if key == "size" and len(node.args) > 1 else node.kwargs.get("dim")
        if d is None:
            return shp
        return Dim(shp.tensor, int(d) % len(shp.sizes), shp.sizes[int(d)])
    if key is operator.getitem:
        idx = node.args[1]
        if isinstance(src, tuple):  # an item of a layer's tuple output (LSTM's (out, (h, c)))
            return src[idx]
        if isinstance(src, Shape):
            return Dim(src.tensor, int(idx) % len(src.sizes), src.sizes[int(idx)])
        return _index(ctx, _arg_name(ctx, env, a0, base), idx, tuple(in_shape or ()), base)
    if key == "expand":
        sizes = _dims(node, "size")
        parts = [g.const(f"{base}.keep", [1], np.int64) if (isinstance(s, int) and s == -1) else _dim_tensor(ctx, env.get(s.name) if isinstance(s, torch.fx.Node) else s, base)
                 for s in sizes]
        shape = g.op("Concat", parts, base, axis=0)
        return g.op("Expand", [_arg_name(ctx, env, a0, base), shape], base)
    if key in ("transpose", torch.transpose):
        r = _rank(in_shape, base)
        d0, d1 = (int(d) % r for d in node.args[1:3])
        perm = list(range(r))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return g.op("Transpose", [_arg_name(ctx, env, a0, base)], base, perm=perm)
    if key in ("permute", torch.permute):
        r = _rank(in_shape, base)
        return g.op("Transpose", [_arg_name(ctx, env, a0, base)], base, perm=[int(d) % r for d in _dims(node, "dims")])
    if key in ("mean", torch.mean):
        r = _rank(in_shape, base)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = list(range(r)) if dim is None else [int(d) % r for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
        keep = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
        return reduce_mean(ctx, _arg_name(ctx, env, a0, base), dims, keep, base)
    if key is F.gelu:
        return gelu(ctx, _arg_name(ctx, env, a0, base), base, node.kwargs.get("approximate", "none"))
    if key in (F.softmax, torch.softmax, "softmax"):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dim is None:
            raise ValueError(f"node {base!r}: softmax needs an explicit dim")
        return g.op("Softmax", [_arg_name(ctx, env, a0, base)], base, axis=int(dim))
    return None
