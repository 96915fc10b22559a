"""ONNX export: a QDQ graph that onnxruntime runs, at any bit width from 1 to 8 and for codebooks.

PyTorch's own exporters refuse fake quantization below 8 bits (ONNX's
QuantizeLinear only knows int8/uint8 ranges). This module writes the graph
itself with ``onnx.helper``, from a ``torch.fx`` trace of the model:

- uniform weights (1..8 bits): the integer codes are stored as an int8 (signed)
  or uint8 (unsigned, with zero point) initializer followed by
  ``DequantizeLinear`` (per tensor, per channel via ``axis``, per group on the
  row view then ``Reshape``). ``weight_format="qcdq"`` stores the grid values as
  float instead, behind ``QuantizeLinear -> Clip -> DequantizeLinear``
  (Brevitas' QCDQ);
- codebook weights (NF4, FP4, ternary, learned levels, ...): uint8 codes,
  ``Gather`` from the level table, times the scale;
- activation quantizers (a layer's ``input_quant``, standalone ``ActQuant``,
  ``PACT``): ``QuantizeLinear -> Clip -> DequantizeLinear`` with the int8/uint8
  container clipped to the format's ``[qmin, qmax]`` (the Clip carries the bit
  width); codebook activations compare against the midpoints and ``Gather``;
- everything else (Conv, Gemm/MatMul, BatchNorm, ReLU, pooling, flatten,
  reshape, add, ...) maps to the standard operator. Quantized layers add their
  float bias after the Conv/Gemm, so that onnxruntime's QDQ rewrites (which
  would re-quantize a bias input to int32) leave the arithmetic unchanged.

The file is checked with ``onnx.checker``, written atomically (temp file, then
rename) and, with ``verify=True``, run in onnxruntime against PyTorch on the
example input and five seeded random inputs drawn like it, with a bound stated in
quantization steps (:mod:`lowbit.targets.onnx_verify`).
"""
from __future__ import annotations

import copy
import json
import operator
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fileio import write_bytes
from ..info import info_of
from ..formats import Codebook, Format, Uniform
from ..nn.act import PACT, ActQuant
from ..nn.layers import QuantLayer
from ..qtensor import QTensor
from ..quantizer import Quantizer
from .onnx_verify import OnnxCheck, output_unit, verify_onnx
from .onnx_ops_seq import SEQ_LEAVES, seq_module
from .onnx_ops_tensor import Dim, Shape, tensor_op

__all__ = ["export_onnx", "to_onnx", "run_onnx", "onnx_ops", "verify_onnx", "OnnxCheck", "WEIGHT_FORMATS", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17
WEIGHT_FORMATS = ("int", "qcdq")


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'lowbit[onnx]'") from None
    return onnx


# --------------------------------------------------------------------------- graph builder


@dataclass
class _Graph:
    """Collects nodes and initializers with unique names."""

    onnx: Any
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    used: set = field(default_factory=set)

    def name(self, base: str) -> str:
        """A graph-unique name derived from ``base``."""
        base = base.replace("/", ".") or "t"
        n, i = base, 1
        while n in self.used:
            n, i = f"{base}_{i}", i + 1
        self.used.add(n)
        return n

    def const(self, base: str, value: np.ndarray | float | int | Sequence[int], dtype: Any = None) -> str:
        """Add an initializer; returns its name."""
        arr = np.asarray(value, dtype=dtype)
        n = self.name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.array(arr, order="C"), n))  # 0-d stays 0-d
        return n

    def op(self, op_type: str, inputs: Sequence[str], base: str, n_out: int = 1, doc: str | None = None, **attrs: Any) -> str:
        """Add a node; returns the name of its (first) output."""
        return self.op_n(op_type, inputs, base, n_out, doc, **attrs)[0]

    def op_n(self, op_type: str, inputs: Sequence[str], base: str, n_out: int, doc: str | None = None, **attrs: Any) -> list[str]:
        """Add a node with ``n_out`` outputs; returns their names."""
        outs = [self.name(f"{base}.{op_type}" if n_out == 1 else f"{base}.{op_type}.{k}") for k in range(n_out)]
        node = self.onnx.helper.make_node(op_type, list(inputs), outs, name=self.name(f"{base}/{op_type}"), **attrs)
        if doc:
            node.doc_string = doc
        self.nodes.append(node)
        return outs


def _np(t: Tensor, dtype: Any = np.float32) -> np.ndarray:
    return t.detach().cpu().to(torch.float64 if dtype == np.float64 else torch.float32).numpy().astype(dtype)


# --------------------------------------------------------------------------- quantizer pieces


def _container(fmt: Uniform, where: str) -> tuple[Any, int, int]:
    if fmt.bits > 8:
        raise ValueError(
            f"{where}: {fmt.bits}-bit integers do not fit an int8 container; "
            "ONNX export supports uniform formats of 1..8 bits and codebooks"
        )
    return (np.int8 if fmt.signed else np.uint8), fmt.qmin, fmt.qmax


def _qcdq(g: _Graph, x: str, scale: np.ndarray, zp: np.ndarray | None, fmt: Uniform, base: str, axis: int | None, where: str) -> str:
    """QuantizeLinear -> Clip -> DequantizeLinear (the Clip is left out when the container is the format)."""
    dt, qmin, qmax = _container(fmt, where)
    zp_arr = np.zeros(scale.shape, dtype=dt) if zp is None else zp.astype(dt)
    s = g.const(f"{base}.scale", scale.astype(np.float32))
    z = g.const(f"{base}.zero_point", zp_arr)
    ax = {} if axis is None else {"axis": axis}
    doc = f"lowbit {fmt.spec}: levels {qmin}..{qmax}"
    q = g.op("QuantizeLinear", [x, s, z], base, doc=doc, **ax)
    if (qmin, qmax) != (int(np.iinfo(dt).min), int(np.iinfo(dt).max)):
        lo, hi = g.const(f"{base}.qmin", qmin, dt), g.const(f"{base}.qmax", qmax, dt)
        q = g.op("Clip", [q, lo, hi], base, doc=doc)
    return g.op("DequantizeLinear", [q, s, z], base, doc=doc, **ax)


def _codebook_act(g: _Graph, x: str, scale: float, zp: float | None, fmt: Codebook, base: str) -> str:
    """Nearest level of a codebook: count the midpoints below x/s, Gather the level, times s."""
    lv = _np(fmt.levels)
    gap = lv[1:] - lv[:-1]
    mid = (lv[:-1] + gap / 2).astype(np.float32)  # as Codebook.encode (ties go to the lower level)
    xn = g.op("Div", [x, g.const(f"{base}.scale", np.float32(scale))], base)
    if zp is not None:
        xn = g.op("Add", [xn, g.const(f"{base}.zero_point", np.float32(zp))], base)
    u = g.op("Unsqueeze", [xn, g.const(f"{base}.axis", [-1], np.int64)], base)
    above = g.op("Greater", [u, g.const(f"{base}.midpoints", mid)], base)
    idx = g.op("ReduceSum", [g.op("Cast", [above], base, to=7), g.const(f"{base}.red", [-1], np.int64)], base, keepdims=0)
    v = g.op("Gather", [g.const(f"{base}.levels", lv), idx], base, doc=f"lowbit codebook {fmt.spec}")
    if zp is not None:
        v = g.op("Sub", [v, g.const(f"{base}.zp", np.float32(zp))], base)
    return g.op("Mul", [v, g.const(f"{base}.s", np.float32(scale))], base)


def _act_quant(g: _Graph, x: str, q: Quantizer, base: str, where: str) -> str:
    """Graph for a frozen activation Quantizer (per-tensor scale)."""
    if type(q).__name__ not in ("Quantizer", "LSQQuantizer"):
        raise ValueError(f"{where}: activation quantizer {type(q).__name__} ({q.spec!r}) has no ONNX form")
    if q.rounding != "nearest":
        raise ValueError(f"{where}: stochastic rounding has no deterministic ONNX form; use rounding 'nearest'")
    if not q.frozen:
        raise ValueError(
            f"{where}: the activation quantizer {q.spec!r} has no fixed scale; calibrate the model "
            "(lowbit.quantize(..., calib=...)) or train it with prepare_qat before exporting"
        )
    scale = q.scale.detach().reshape(-1)
    if scale.numel() != 1:
        raise ValueError(f"{where}: activation quantizers must have one scale (granularity 'tensor'), got {scale.numel()}")
    zp = q.zero_point.reshape(-1) if q.zero_point.numel() else None
    if isinstance(q.fmt, Uniform):
        return _qcdq(g, x, _np(scale).reshape(()), None if zp is None else zp.cpu().numpy().reshape(()), q.fmt, base, None, where)
    if isinstance(q.fmt, Codebook):
        return _codebook_act(g, x, float(scale[0]), None if zp is None else float(zp[0]), q.fmt, base)
    raise ValueError(f"{where}: format {q.fmt!r} has no ONNX form")


def _pact(g: _Graph, x: str, m: PACT, base: str) -> str:
    n = float(2**m.bits - 1)
    alpha = m.alpha.detach().float()
    step = (alpha / n).reshape(())  # as PACT.forward computes it
    return _qcdq(g, x, _np(step), np.zeros((), np.uint8), Uniform(m.bits, signed=False), base, None, f"PACT {base!r}")


# --------------------------------------------------------------------------- weights


def _from_rows(g: _Graph, rows: str, qt: QTensor, base: str) -> str:
    """Row view [n_slices, len] -> the weight's shape (inverse of Granularity.to_rows)."""
    shape = list(qt.shape)
    gran = qt.granularity
    if gran.kind != "channel":
        return g.op("Reshape", [rows, g.const(f"{base}.shape", shape, np.int64)], base)
    axis = gran.axis % len(shape)
    moved = [shape[axis]] + [s for i, s in enumerate(shape) if i != axis]
    r = g.op("Reshape", [rows, g.const(f"{base}.moved_shape", moved, np.int64)], base)
    if axis == 0:
        return r
    perm = list(range(1, axis + 1)) + [0] + list(range(axis + 1, len(shape)))
    return g.op("Transpose", [r], base, perm=perm)


def _weight_from_qtensor(g: _Graph, qt: QTensor, base: str, where: str, weight_format: str) -> str:
    """Graph that rebuilds ``qt.dequantize()`` from stored integer codes."""
    fmt = qt.fmt
    scale = _np(qt.scale)
    zp = None if qt.zero_point is None else qt.zero_point.cpu().numpy()
    gran = qt.granularity
    if isinstance(fmt, Uniform):
        dt, qmin, qmax = _container(fmt, where)
        ints = qt.int_repr()
        if gran.kind == "tensor":
            arr, axis, s, z = ints, None, scale.reshape(()), None if zp is None else zp.reshape(())
        elif gran.kind == "channel":
            arr, axis, s, z = ints, gran.axis % len(qt.shape), scale, zp
        else:  # group: per row of the [n_groups, size] view
            arr, axis, s, z = gran.to_rows(ints), 0, scale, zp
        arr = arr.cpu().numpy()
        if weight_format == "qcdq":
            deq = qt.dequantize()
            grid = _np(gran.to_rows(deq) if gran.kind == "group" else deq)
            w = _qcdq(g, g.const(f"{base}.float", grid), s, z, fmt, f"{base}.q", axis, where)
        else:
            zz = g.const(f"{base}.zero_point", np.zeros(s.shape, dt) if z is None else z.astype(dt))
            codes = g.const(f"{base}.int{fmt.bits}", arr.astype(dt))
            doc = f"lowbit {fmt.spec} weight: levels {qmin}..{qmax}, granularity {gran.spec}"
            ax = {} if axis is None else {"axis": axis}
            w = g.op("DequantizeLinear", [codes, g.const(f"{base}.scale", s), zz], base, doc=doc, **ax)
        if gran.kind == "group":
            w = g.op("Reshape", [w, g.const(f"{base}.shape", list(qt.shape), np.int64)], base)
        return w
    if isinstance(fmt, Codebook):
        if fmt.bits > 8:
            raise ValueError(f"{where}: a codebook of {fmt.levels.numel()} levels needs more than 8-bit codes; ONNX export stores uint8 codes")
        codes = g.const(f"{base}.codes{fmt.bits}", qt.codes().cpu().numpy().astype(np.uint8))
        idx = g.op("Cast", [codes], base, to=6)  # int32 indices
        lv = g.const(f"{base}.levels", _np(fmt.levels))
        v = g.op("Gather", [lv, idx], base, doc=f"lowbit codebook {fmt.spec} weight, granularity {gran.spec}")
        if zp is not None:
            v = g.op("Sub", [v, g.const(f"{base}.zero_point", zp.astype(np.float32).reshape(-1, 1))], base)
        v = g.op("Mul", [v, g.const(f"{base}.scale", scale.reshape(-1, 1))], base)
        return _from_rows(g, v, qt, base)
    raise ValueError(f"{where}: weight format {fmt!r} has no ONNX form")


def _layer_weight(g: _Graph, m: nn.Module, base: str, weight_format: str) -> str:
    where = f"layer {base!r}"
    w = m.weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError(f"{where}: weight contains NaN or Inf values")
    if isinstance(m, QuantLayer):
        qt = m.encode_weight()
        if qt is not None:
            ref = m.quantized_weight().detach().float()
            if not torch.allclose(qt.dequantize().float(), ref, rtol=0, atol=1e-6 * float(ref.abs().max()) + 1e-12):
                warnings.warn(f"{where}: its QTensor does not reproduce the fake-quantized weight; the ONNX graph follows the QTensor", stacklevel=4)
            return _weight_from_qtensor(g, qt, f"{base}.weight", where, weight_format)
    return g.const(f"{base}.weight", _np(w))


# --------------------------------------------------------------------------- module / op handlers


@dataclass
class _Ctx:
    g: _Graph
    weight_format: str
    shapes: dict  # fx node name -> output shape (tuple) or None
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    taps: dict = field(default_factory=dict)  # activation quantizer module name -> its ONNX output (for verification)
    tapped_twice: set = field(default_factory=set)  # quantizers called more than once: one tensor cannot stand for them

    def tap(self, module_name: str, tensor: str) -> str:
        """Remember that ``tensor`` is the output of the activation quantizer ``module_name``."""
        if module_name in self.taps:
            self.tapped_twice.add(module_name)
        self.taps[module_name] = tensor
        return tensor


def _input_of(ctx: _Ctx, m: nn.Module, x: str, base: str) -> str:
    aq = getattr(m, "input_quant", None)
    if aq is None:
        return x
    out = _act_quant(ctx.g, x, aq.q, f"{base}.input_quant", f"layer {base!r} (input quantizer)")
    return ctx.tap(f"{base}.input_quant", out)


def _bias(ctx: _Ctx, m: nn.Module, base: str) -> list[str]:
    # Quantized layers add their bias after the Gemm/Conv: onnxruntime re-quantizes a bias
    # input of a Conv/Gemm fed by DequantizeLinear to int32 (at s_x * s_w), which rounds it
    # away from the trained value; a separate Add keeps it float under every optimization level.
    b = getattr(m, "bias", None)
    return [] if b is None or isinstance(m, QuantLayer) else [ctx.g.const(f"{base}.bias", _np(b))]


def _add_bias(ctx: _Ctx, m: nn.Module, y: str, base: str, channel_dims: int) -> str:
    b = getattr(m, "bias", None)
    if b is None or not isinstance(m, QuantLayer):
        return y
    arr = _np(b).reshape([-1] + [1] * channel_dims)
    return ctx.g.op("Add", [y, ctx.g.const(f"{base}.bias", arr)], base)


def _linear(ctx: _Ctx, m: nn.Linear, x: str, base: str, in_shape: tuple | None) -> str:
    g = ctx.g
    x = _input_of(ctx, m, x, base)
    w = _layer_weight(g, m, base, ctx.weight_format)
    if in_shape is not None and len(in_shape) == 2:
        return _add_bias(ctx, m, g.op("Gemm", [x, w] + _bias(ctx, m, base), base, transB=1), base, 0)
    y = g.op("MatMul", [x, g.op("Transpose", [w], base, perm=[1, 0])], base)
    b = _bias(ctx, m, base)
    return _add_bias(ctx, m, g.op("Add", [y, b[0]], base) if b else y, base, 0)


def _tup(v: Any, n: int) -> list[int]:
    return [int(a) for a in v] if isinstance(v, (tuple, list)) else [int(v)] * n


def _conv(ctx: _Ctx, m: nn.modules.conv._ConvNd, x: str, base: str) -> str:
    where = f"layer {base!r}"
    if m.transposed:
        raise ValueError(f"{where}: transposed convolutions are not supported by the ONNX exporter")
    if m.padding_mode != "zeros":
        raise ValueError(f"{where}: padding_mode {m.padding_mode!r} is not supported (only 'zeros')")
    k = len(m.kernel_size)
    if isinstance(m.padding, str):
        if m.padding != "valid":
            raise ValueError(f"{where}: padding='same' is not supported; give explicit integer padding")
        pads = [0] * k
    else:
        pads = _tup(m.padding, k)
    g = ctx.g
    x = _input_of(ctx, m, x, base)
    w = _layer_weight(g, m, base, ctx.weight_format)
    y = g.op(
        "Conv", [x, w] + _bias(ctx, m, base), base,
        kernel_shape=list(m.kernel_size), strides=_tup(m.stride, k), pads=pads + pads,
        dilations=_tup(m.dilation, k), group=int(m.groups),
    )
    return _add_bias(ctx, m, y, base, k)


def _batchnorm(ctx: _Ctx, m: nn.modules.batchnorm._BatchNorm, x: str, base: str) -> str:
    if not m.track_running_stats or m.running_mean is None:
        raise ValueError(f"layer {base!r}: BatchNorm without running statistics cannot be exported")
    g, c = ctx.g, m.num_features
    gamma = _np(m.weight) if m.weight is not None else np.ones(c, np.float32)
    beta = _np(m.bias) if m.bias is not None else np.zeros(c, np.float32)
    ins = [x, g.const(f"{base}.weight", gamma), g.const(f"{base}.bias", beta),
           g.const(f"{base}.running_mean", _np(m.running_mean)), g.const(f"{base}.running_var", _np(m.running_var))]
    return g.op("BatchNormalization", ins, base, epsilon=float(m.eps))


def _pool(ctx: _Ctx, m: nn.Module, x: str, base: str) -> str:
    g = ctx.g
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
        if any(int(o) != 1 for o in _tup(m.output_size, 1 if "1d" in type(m).__name__ else 2)):
            raise ValueError(f"layer {base!r}: adaptive pooling is only exported with output size 1")
        return g.op("GlobalAveragePool" if "Avg" in type(m).__name__ else "GlobalMaxPool", [x], base)
    k = 1 if "1d" in type(m).__name__ else 2
    ks = _tup(m.kernel_size, k)
    stride = _tup(m.stride if m.stride else m.kernel_size, k)
    pads = _tup(m.padding, k)
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        if m.return_indices:
            raise ValueError(f"layer {base!r}: max pooling with return_indices is not supported")
        return g.op("MaxPool", [x], base, kernel_shape=ks, strides=stride, pads=pads + pads,
                    dilations=_tup(m.dilation, k), ceil_mode=int(m.ceil_mode))
    if getattr(m, "divisor_override", None):
        raise ValueError(f"layer {base!r}: AvgPool divisor_override is not supported")
    return g.op("AveragePool", [x], base, kernel_shape=ks, strides=stride, pads=pads + pads,
                ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad))


def _reshape(ctx: _Ctx, x: str, base: str, in_shape: tuple | None, out_shape: tuple | None) -> str:
    g = ctx.g
    if out_shape is None:
        raise ValueError(f"node {base!r}: reshape needs a traced output shape")
    target = list(out_shape)
    if in_shape and out_shape and in_shape[0] == out_shape[0]:
        target[0] = 0  # keep the batch dimension dynamic
    return g.op("Reshape", [x, g.const(f"{base}.shape", target, np.int64)], base)


_SIMPLE_ACTS: dict[type, str] = {nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh"}
_PASS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_LEAVES = (QuantLayer, ActQuant, PACT, nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
           nn.Flatten, nn.Softmax, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh) + tuple(_SIMPLE_ACTS) + _PASS + _POOLS + SEQ_LEAVES


def _module(ctx: _Ctx, m: nn.Module, x: str, base: str, in_shape: tuple | None, out_shape: tuple | None) -> str:
    g = ctx.g
    if isinstance(m, ActQuant):
        return ctx.tap(base, _act_quant(g, x, m.q, base, f"activation quantizer {base!r}"))
    if isinstance(m, PACT):
        return ctx.tap(base, _pact(g, x, m, base))
    if isinstance(m, nn.Linear):
        return _linear(ctx, m, x, base, in_shape)
    if isinstance(m, nn.modules.conv._ConvNd):
        return _conv(ctx, m, x, base)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _batchnorm(ctx, m, x, base)
    if type(m) in _SIMPLE_ACTS:
        return g.op(_SIMPLE_ACTS[type(m)], [x], base)
    if isinstance(m, nn.LeakyReLU):
        return g.op("LeakyRelu", [x], base, alpha=float(m.negative_slope))
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return g.op("Clip", [x, g.const(f"{base}.min", np.float32(m.min_val)), g.const(f"{base}.max", np.float32(m.max_val))], base)
    if isinstance(m, _PASS):
        return x
    if isinstance(m, _POOLS):
        return _pool(ctx, m, x, base)
    if isinstance(m, nn.Flatten):
        return _reshape(ctx, x, base, in_shape, out_shape)
    if isinstance(m, nn.Softmax):
        return g.op("Softmax", [x], base, axis=int(m.dim if m.dim is not None else -1))
    raise ValueError(f"module {base!r} ({type(m).__name__}) has no ONNX form in lowbit's exporter")


_FUNC_ACTS: dict[Any, str] = {
    torch.relu: "Relu", F.relu: "Relu", torch.sigmoid: "Sigmoid", torch.tanh: "Tanh",
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
}
_BINARY: dict[Any, str] = {
    operator.add: "Add", torch.add: "Add", "add": "Add", operator.mul: "Mul", torch.mul: "Mul", "mul": "Mul",
    operator.sub: "Sub", torch.sub: "Sub", "sub": "Sub", operator.truediv: "Div", torch.div: "Div", "div": "Div",
}
_IDENTITY_METHODS = ("contiguous", "clone", "detach")
_MAX_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_FUNC_POOLS: dict[str, tuple[type, tuple[str, ...]]] = {
    "max_pool1d": (nn.MaxPool1d, _MAX_ARGS), "max_pool2d": (nn.MaxPool2d, _MAX_ARGS),
    "avg_pool1d": (nn.AvgPool1d, _AVG_ARGS), "avg_pool2d": (nn.AvgPool2d, _AVG_ARGS),
    "adaptive_avg_pool1d": (nn.AdaptiveAvgPool1d, ("output_size",)),
    "adaptive_avg_pool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
}
_RESHAPES: tuple[Any, ...] = (torch.flatten, torch.reshape, "flatten", "view", "reshape")


# --------------------------------------------------------------------------- tracing


class _Tracer(torch.fx.Tracer):
    """Keeps lowbit's layers and every supported torch layer as single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        """True for modules the exporter maps as a whole."""
        if isinstance(m, _LEAVES):
            return True
        return super().is_leaf_module(m, qualname)


# what _module maps (a leaf module of any other type has no ONNX form)
_MODULE_FORMS = (ActQuant, PACT, nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LeakyReLU,
                 nn.Hardtanh, nn.Flatten, nn.Softmax) + tuple(_SIMPLE_ACTS) + _PASS + _POOLS + SEQ_LEAVES


class _Refused(ValueError):
    """A module the exporter cannot map, named while tracing (in forward order)."""


class _ScanTracer(_Tracer):
    """The exporter's tracer, stopping at the first leaf module that has no ONNX form."""

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name) and not isinstance(m, _MODULE_FORMS):
            raise _Refused(f"module {name!r} ({type(m).__name__}) has no ONNX form in lowbit's exporter")
        return super().call_module(m, forward, args, kwargs)


def _refuse_unexportable(model: nn.Module) -> None:
    """Raise a ValueError naming the first layer (in forward order) that has no ONNX form.

    Runs before the example input is checked: a model that cannot be exported at all
    says which layer is the reason, whatever input it was given (an LSTM classifier's
    token ids are no float tensor, but its embedding is what the exporter refuses).
    """
    try:
        _ScanTracer().trace(model)
    except _Refused:
        raise
    except ValueError as e:
        if "has no ONNX form" in str(e):  # a layer that refuses tracing names itself (nn.attention.refuse_trace)
            raise
    except Exception:  # noqa: BLE001 - other tracing failures are reported by _trace, with the input checked
        pass


def _trace(model: nn.Module, example: Tensor) -> tuple[torch.fx.GraphModule, dict[str, tuple | None]]:
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises many types on data-dependent control flow
        raise ValueError(
            f"the model could not be traced with torch.fx ({type(e).__name__}: {e}); "
            "the ONNX exporter needs a forward pass without data-dependent control flow"
        ) from None
    gm = torch.fx.GraphModule(model, graph)
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    shapes: dict[str, tuple | None] = {}
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        shapes[n.name] = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
    return gm, shapes


def _arg_name(ctx: _Ctx, env: dict[str, Any], a: Any, base: str) -> str:
    if isinstance(a, torch.fx.Node):
        if not isinstance(env.get(a.name), str):
            raise ValueError(f"node {base!r}: its input {a.name!r} is not a tensor the exporter produced")
        return env[a.name]
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return ctx.g.const(f"{base}.const", np.float32(a))
    raise ValueError(f"node {base!r}: argument {a!r} has no ONNX form")


def _convert_node(ctx: _Ctx, gm: torch.fx.GraphModule, node: torch.fx.Node, env: dict[str, Any]) -> Any:
    g = ctx.g
    base = node.name
    in_shape = ctx.shapes.get(node.args[0].name) if node.args and isinstance(node.args[0], torch.fx.Node) else None
    out_shape = ctx.shapes.get(node.name)
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, SEQ_LEAVES) and not isinstance(m, (ActQuant, PACT)):
            return seq_module(ctx, m, node, env, str(node.target))
        return _module(ctx, m, _arg_name(ctx, env, node.args[0], base), str(node.target), in_shape, out_shape)
    target: Any = node.target
    if node.op not in ("call_function", "call_method"):
        raise ValueError(f"node {base!r}: fx op {node.op!r} ({target}) has no ONNX form")
    key = target if node.op == "call_function" else str(target)
    if isinstance(target, torch._ops.OpOverload):  # a torch.export program's aten ops map as their method names
        key = target.overloadpacket.__name__
    name = getattr(target, "__name__", str(target))
    if key in _FUNC_ACTS:
        return g.op(_FUNC_ACTS[key], [_arg_name(ctx, env, node.args[0], base)], base)
    if key in _BINARY and len(node.args) == 2 and not node.kwargs:
        a, b = (_arg_name(ctx, env, v, base) for v in node.args)
        return g.op(_BINARY[key], [a, b], base)
    if key in _IDENTITY_METHODS:
        return _arg_name(ctx, env, node.args[0], base)
    if key in _RESHAPES:
        return _reshape(ctx, _arg_name(ctx, env, node.args[0], base), base, in_shape, out_shape)
    if node.op == "call_function" and name in _FUNC_POOLS:  # F.max_pool2d(x, 2) etc.: the module's ONNX form
        cls, names = _FUNC_POOLS[name]
        kw = {**dict(zip(names, node.args[1:])), **node.kwargs}
        return _pool(ctx, cls(**kw), _arg_name(ctx, env, node.args[0], base), base)
    if key in (torch.cat, "cat"):
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return g.op("Concat", [_arg_name(ctx, env, t, base) for t in tensors], base, axis=int(dim))
    done = tensor_op(ctx, node, key, env, base, in_shape, out_shape)
    if done is not None:
        return done
    raise ValueError(
        f"node {base!r} ({node.op} {name}) has no ONNX form in lowbit's exporter; supported: Linear, Conv1d/2d, "
        "BatchNorm, ReLU/Sigmoid/Tanh/LeakyReLU/ReLU6, pooling (modules and F.*_pool*d), Flatten/reshape, add/sub/mul/div, cat, "
        "and lowbit's quantized layers, ActQuant and PACT"
    )


# --------------------------------------------------------------------------- public API


_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64)


def example_tensor(example_input: Tensor) -> Tensor:
    """The example as the graph takes it: float32, or int64 for integer inputs (token ids)."""
    x = example_input.detach().cpu()
    return x.long() if not x.is_floating_point() else x.float()


def _check_args(model: object, example_input: object, opset: int, weight_format: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a torch.Tensor (a batch of inputs), got {type(example_input).__name__}")
    if example_input.dtype not in _INPUT_DTYPES or example_input.dim() < 1 or example_input.numel() == 0:
        raise ValueError("example_input must be a non-empty float (or integer token id) tensor with a batch dimension, "
                         f"got {example_input.dtype} {tuple(example_input.shape)}")
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 23:
        raise ValueError(f"opset must be an int in 13..23 (per-channel QuantizeLinear needs 13), got {opset!r}")
    for name, m in model.named_modules():
        if isinstance(m, ActQuant) and m.calibrating:
            raise ValueError(f"activation quantizer {name!r} is still calibrating: finish calibration (freeze) before exporting")


def to_onnx(
    model: nn.Module,
    example_input: Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    weight_format: str = "int",
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "output",
) -> Any:
    """Build the ONNX ModelProto of ``model`` (in eval mode) for inputs shaped like ``example_input``."""
    onnx = _require_onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).float().eval()  # tracing and ShapeProp must not touch the caller's model
    _refuse_unexportable(model)  # the layer that cannot export, before the input is checked
    _check_args(model, example_input, opset, weight_format)
    example = example_tensor(example_input)
    gm, shapes = _trace(model, example)
    g = _Graph(onnx)
    ctx = _Ctx(g, weight_format, shapes, opset=opset, dynamic_batch=dynamic_batch)
    env: dict[str, Any] = {}  # fx node -> ONNX tensor name (a tuple for a layer's tuple output, Shape/Dim for sizes)
    inputs, outputs = [], []
    unit = None
    dims: list[Any] = list(example.shape)
    if dynamic_batch:
        dims[0] = "batch"
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if inputs:
                raise ValueError(f"the model takes more than one input ({node.name!r}); the exporter handles one")
            nm = g.name(input_name)
            env[node.name] = nm
            dt = onnx.TensorProto.FLOAT if example.is_floating_point() else onnx.TensorProto.INT64
            inputs.append(onnx.helper.make_tensor_value_info(nm, dt, dims))
        elif node.op == "output":
            res = node.args[0]
            items = list(res) if isinstance(res, (tuple, list)) else [res]
            unit = output_unit(gm, items[0])
            flat = [pair for r in items for pair in _flat_outputs(ctx, env, r, shapes)]
            for k, (src, shape) in enumerate(flat):
                nm = g.name(output_name if len(flat) == 1 else f"{output_name}{k}")
                g.nodes.append(onnx.helper.make_node("Identity", [src], [nm], name=g.name(f"{nm}/Identity")))
                shp = list(shape or [])
                if dynamic_batch and shp:
                    shp[0] = "batch"
                outputs.append(onnx.helper.make_tensor_value_info(nm, onnx.TensorProto.FLOAT, shp or None))
        elif node.op == "get_attr":  # a parameter or buffer read directly (a class token, a position embedding)
            val = _fetch_attr(gm, str(node.target))
            if not isinstance(val, Tensor):
                raise ValueError(f"node {node.name!r}: the attribute {node.target!r} is no tensor; only tensors are exported")
            env[node.name] = g.const(str(node.target), _np(val) if val.is_floating_point() else val.detach().cpu().numpy())
        else:
            with torch.no_grad():  # weights are read, never differentiated
                env[node.name] = _convert_node(ctx, gm, node, env)
    graph = onnx.helper.make_graph(g.nodes, "lowbit", inputs, outputs, g.inits)
    proto = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="lowbit", producer_version=_version()
    )
    proto.ir_version = min(proto.ir_version, 10)  # readable by onnxruntime releases of the last two years
    info = info_of(model)
    onnx.helper.set_model_props(proto, {
        "lowbit.config": info.config,
        "lowbit.stage": info.stage,
        "lowbit.layers": json.dumps(info.layers, sort_keys=True) if info.layers else "",
        # which tensors are activation quantizers' outputs and where the output's step comes from:
        # what verify_onnx needs to state its bound in quantization steps (onnx_verify.py)
        "lowbit.verify": json.dumps({
            "taps": {k: v for k, v in sorted(ctx.taps.items()) if k not in ctx.tapped_twice},
            "output": unit,
        }, sort_keys=True),
    })
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # the checker raises ValidationError / InferenceError
        raise ValueError(f"the exported graph failed onnx.checker: {e}") from None
    return proto


def _flat_outputs(ctx: _Ctx, env: dict[str, Any], r: Any, shapes: dict) -> list[tuple[str, Any]]:
    """(ONNX tensor, traced shape) of one output item; a layer's tuple output (an RNN's ``out, (h, c)``) flattened."""
    v = env.get(r.name) if isinstance(r, torch.fx.Node) else None
    if not isinstance(v, tuple):
        return [(_arg_name(ctx, env, r, "output"), shapes.get(r.name) if isinstance(r, torch.fx.Node) else None)]
    out: list[tuple[str, Any]] = []

    def walk(t: Any, meta: Any) -> None:
        if isinstance(t, tuple):
            for k, item in enumerate(t):
                walk(item, meta[k] if isinstance(meta, (tuple, list)) and k < len(meta) else None)
        elif t is not None:
            out.append((t, tuple(meta.shape) if hasattr(meta, "shape") else None))

    walk(v, r.meta.get("tensor_meta"))
    return out


def _fetch_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lowbit")
    except Exception:  # pragma: no cover
        return "0"


def _write_atomic(data: bytes, path: Path) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of the output path does not exist: {path.parent}")
    write_bytes(path, data)


def run_onnx(model: "str | os.PathLike[str] | Any", x: Tensor | np.ndarray, *, exact: bool = True, threads: int = 1) -> np.ndarray:
    """Run an ONNX file (or ModelProto) in onnxruntime on one input batch; returns the first output.

    ``exact=True`` turns off onnxruntime's QDQ rewrites (``session.disable_quant_qdq``):
    they re-quantize float biases to int32 and fuse Q/DQ pairs into integer kernels
    (QLinearConv, QGemm), which is what a deployment does but rounds differently
    from the fake-quantized PyTorch model. With it, the graph computes exactly
    the fake-quantized arithmetic.
    """
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover
        raise ImportError("running ONNX models needs onnxruntime: pip install 'lowbit[onnx]'") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    if exact:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    src = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    sess = ort.InferenceSession(str(src) if isinstance(src, os.PathLike) else src, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dt = np.int64 if inp.type == "tensor(int64)" else np.float32  # token ids stay integers
    arr = x.detach().cpu().numpy().astype(dt) if isinstance(x, Tensor) else np.asarray(x, dtype=dt)
    return sess.run(None, {inp.name: arr})[0]


def onnx_ops(model: "str | os.PathLike[str] | Any") -> dict[str, int]:
    """Count of each operator type in an ONNX file or ModelProto."""
    onnx = _require_onnx()
    proto = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else model
    out: dict[str, int] = {}
    for n in proto.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def export_onnx(
    model: nn.Module,
    path: "str | os.PathLike[str]",
    example_input: Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    weight_format: str = "int",
    dynamic_batch: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
    random_inputs: int = 5,
    seed: int = 0,
    max_moved: float = 0.01,
) -> Path:
    """Write ``model`` as a QDQ ONNX graph to ``path`` (atomically); with ``verify``, check it in onnxruntime.

    Verification (:func:`~lowbit.targets.onnx_verify.verify_onnx`) runs the example input and
    ``random_inputs`` seeded random batches drawn like it, and bounds the difference in
    quantization steps: each activation may move at most one step, on at most ``max_moved``
    of its elements; the output within what those moves cause (``atol`` of the output range
    when no quantized activation feeds the output).
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    proto = to_onnx(model, example_input, opset=opset, weight_format=weight_format, dynamic_batch=dynamic_batch)
    if verify:
        _verify(model, proto, example_input, atol=atol, random_inputs=random_inputs, seed=seed, max_moved=max_moved)
    _write_atomic(proto.SerializeToString(), path)
    return path


def _verify(model: nn.Module, proto: Any, example_input: Tensor, **kw: Any) -> OnnxCheck | None:
    """Run :func:`verify_onnx` when onnxruntime is installed (else warn that the graph was not run)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        warnings.warn("onnxruntime is not installed: the exported graph was not run (pip install 'lowbit[onnx]')", stacklevel=3)
        return None
    return verify_onnx(model, proto, example_input, **kw)
