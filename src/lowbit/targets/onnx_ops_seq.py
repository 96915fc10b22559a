"""ONNX forms of lowbit's sequence layers: embeddings, LSTM/GRU, attention and transformer encoders.

Each is a leaf of the exporter's fx trace (their forwards hold masks, loops and
Python control flow that fx cannot follow), emitted here op by op:

- ``QuantEmbedding`` / ``nn.Embedding``: ``Gather`` (axis 0) from the table, the
  quantized table being the int codes + ``DequantizeLinear`` per row;
- ``QuantLSTM`` / ``QuantGRU`` (and the float ``nn.LSTM`` / ``nn.GRU``): one ONNX
  ``LSTM`` / ``GRU`` op per layer and direction, with the dequantized weights in
  ONNX's gate order (PyTorch ``i,f,g,o`` -> ONNX ``i,o,f,c``; ``r,z,n`` -> ``z,r,h``
  with ``linear_before_reset=1``). One op per direction because each direction's
  ``ih`` has its own input quantizer. A quantized hidden state (a state quantizer)
  has no form in the fused op: refused with a ValueError;
- ``QuantMultiheadAttention`` (and ``nn.MultiheadAttention`` as its float
  equivalent): the unfused arithmetic of :mod:`lowbit.nn.attention` step for step
  in its sequence-first layout (so that every input quantizer sees the tensor
  PyTorch's sees): projections through the quantized Gemm/MatMul emission,
  ``Reshape``/``Transpose`` to heads, ``MatMul`` / ``Softmax`` / ``MatMul``;
- ``LowbitTransformerEncoderLayer`` / ``LowbitTransformerEncoder`` (and the torch
  classes): pre- or post-norm residual blocks, ``LayerNormalization`` (opset >= 17),
  GELU in its ``Erf`` form (tanh form for ``approximate='tanh'``) or ReLU.

Masks, ``bias_k``/``bias_v``, ``add_zero_attn`` and initial states are refused with a
ValueError naming the layer.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import onnx_export as _ox
from ..nn.attention import LowbitTransformerEncoder, LowbitTransformerEncoderLayer, QuantMultiheadAttention
from ..nn.rnn import QuantGRU, QuantLSTM, _QuantRNN

__all__ = ["SEQ_LEAVES", "seq_module", "layer_norm", "gelu", "reduce_mean"]

SEQ_LEAVES: tuple[type, ...] = (
    QuantMultiheadAttention, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder,
    _QuantRNN, nn.LSTM, nn.GRU, nn.Embedding, nn.LayerNorm, nn.GELU,
)
# PyTorch gate blocks in ONNX's order: LSTM i,o,f,c from i,f,g,o; GRU z,r,h from r,z,n
_GATE_ORDER = {4: (0, 3, 1, 2), 3: (1, 0, 2)}
# onnx_export._linear reads only the rank of the input shape: 2 -> Gemm, 3 -> MatMul with the weight transposed
_RANK2, _RANK3 = (0, 0), (0, 0, 0)


def _refuse(base: str, m: nn.Module, what: str) -> ValueError:
    return ValueError(f"layer {base!r} ({type(m).__name__}): {what} has no ONNX form in lowbit's exporter")


def _no_extra(node: torch.fx.Node, m: nn.Module, base: str, allowed: int = 1, ok_kwargs: tuple[str, ...] = ()) -> None:
    """Refuse masks, initial states and other extra arguments (only None / False are accepted)."""
    extra = list(node.args[allowed:]) + [v for k, v in node.kwargs.items() if k not in ok_kwargs]
    if any(v is not None and v is not False for v in extra):
        raise _refuse(base, m, "a call with masks or initial states")


def layer_norm(ctx: Any, m: nn.LayerNorm, x: str, base: str) -> str:
    """LayerNormalization over the trailing ``normalized_shape`` dims (opset >= 17)."""
    if ctx.opset < 17:
        raise ValueError(f"layer {base!r} (LayerNorm): LayerNormalization needs opset >= 17, got {ctx.opset}")
    g = ctx.g
    shape = tuple(m.normalized_shape)
    w = _ox._np(m.weight) if m.weight is not None else np.ones(shape, np.float32)
    b = _ox._np(m.bias) if getattr(m, "bias", None) is not None else np.zeros(shape, np.float32)
    return g.op("LayerNormalization", [x, g.const(f"{base}.weight", w), g.const(f"{base}.bias", b)], base,
                axis=-len(shape), epsilon=float(m.eps))


def gelu(ctx: Any, x: str, base: str, approximate: str = "none") -> str:
    """GELU: 0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation, as torch computes them."""
    g = ctx.g
    c = lambda n, v: g.const(f"{base}.{n}", np.float32(v))  # noqa: E731
    if approximate == "tanh":
        x3 = g.op("Mul", [g.op("Mul", [x, x], base), x], base)
        inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [x3, c("k", 0.044715)], base)], base), c("s", math.sqrt(2 / math.pi))], base)
        t = g.op("Tanh", [inner], base)
    else:
        t = g.op("Erf", [g.op("Mul", [x, c("rsqrt2", 1 / math.sqrt(2))], base)], base)
    half = g.op("Mul", [x, c("half", 0.5)], base)
    return g.op("Mul", [half, g.op("Add", [t, c("one", 1.0)], base)], base)


def _embedding(ctx: Any, m: nn.Embedding, ids: str, base: str) -> str:
    if m.max_norm is not None:
        raise _refuse(base, m, "max_norm (renormalising the table in the forward)")
    table = _ox._layer_weight(ctx.g, m, base, ctx.weight_format)  # int codes + DequantizeLinear per row
    return ctx.g.op("Gather", [table, ids], base, axis=0)


# --------------------------------------------------------------------------- recurrent layers


def _rnn(ctx: Any, m: nn.Module, x: str, base: str, in_rank: int) -> tuple:
    g = ctx.g
    if isinstance(m, (nn.LSTM, nn.GRU)):
        if getattr(m, "proj_size", 0):
            raise _refuse(base, m, "proj_size (a projected LSTM)")
        m = (QuantLSTM if isinstance(m, nn.LSTM) else QuantGRU).from_float(m)  # the same recurrence, float weights
    if in_rank != 3:
        raise _refuse(base, m, f"a {in_rank}-D input (only batched 3-D inputs are exported)")
    lstm = isinstance(m, QuantLSTM)
    order = _GATE_ORDER[m.gates]
    hsz = m.hidden_size
    if m.batch_first:
        x = g.op("Transpose", [x], base, perm=[1, 0, 2])  # [T, B, F]: what PyTorch's input quantizers see
    hs, cs = [], []
    for k in range(m.num_layers):
        ys = []
        for d in range(m.directions):
            name = f"l{k}{'_reverse' if d else ''}"
            ih, hh = getattr(m, f"ih_{name}"), getattr(m, f"hh_{name}")
            if getattr(hh, "input_quant", None) is not None:
                raise _refuse(base, m, "a quantized hidden state (state quantizer)")
            sub = f"{base}.ih_{name}"
            xq = _ox._input_of(ctx, ih, x, sub)
            idx = np.concatenate([np.arange(b * hsz, (b + 1) * hsz) for b in order]).astype(np.int64)
            perm = g.const(f"{base}.{name}.gate_order", idx)
            ax0 = g.const(f"{base}.{name}.axis0", [0], np.int64)
            w = g.op("Unsqueeze", [g.op("Gather", [_ox._layer_weight(g, ih, sub, ctx.weight_format), perm], sub, axis=0), ax0], sub)
            hsub = f"{base}.hh_{name}"
            r = g.op("Unsqueeze", [g.op("Gather", [_ox._layer_weight(g, hh, hsub, ctx.weight_format), perm], hsub, axis=0), ax0], hsub)
            ins = [xq, w, r]
            if ih.bias is not None or hh.bias is not None:
                bi = _ox._np(ih.bias)[idx] if ih.bias is not None else np.zeros(m.gates * hsz, np.float32)
                bh = _ox._np(hh.bias)[idx] if hh.bias is not None else np.zeros(m.gates * hsz, np.float32)
                ins.append(g.const(f"{base}.{name}.bias", np.concatenate([bi, bh])[None]))
            attrs: dict[str, Any] = {"hidden_size": hsz, "direction": "reverse" if d else "forward"}
            if not lstm:
                attrs["linear_before_reset"] = 1  # torch: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
            op = "LSTM" if lstm else "GRU"
            outs = g.op_n(op, ins, f"{base}.{name}", 3 if lstm else 2, **attrs)
            y = outs[0]  # Y: [T, 1, B, H]; Y_h, Y_c: [1, B, H]
            hs.append(outs[1])
            if lstm:
                cs.append(outs[2])
            ys.append(g.op("Squeeze", [y, g.const(f"{base}.{name}.axis1", [1], np.int64)], base))
        x = ys[0] if len(ys) == 1 else g.op("Concat", ys, base, axis=2)  # [T, B, dirs * H]
    out = g.op("Transpose", [x], base, perm=[1, 0, 2]) if m.batch_first else x
    h_n = hs[0] if len(hs) == 1 else g.op("Concat", hs, base, axis=0)
    if not lstm:
        return (out, h_n)
    c_n = cs[0] if len(cs) == 1 else g.op("Concat", cs, base, axis=0)
    return (out, (h_n, c_n))


# --------------------------------------------------------------------------- attention


def _attention(ctx: Any, m: nn.Module, q_in: str, k_in: str, v_in: str, base: str, seq_first_len: int, weights: bool, average: bool) -> tuple:
    """Self/cross attention on sequence-first inputs [T, B, E]; returns (output [T, B, E], weights or None)."""
    g = ctx.g
    if isinstance(m, nn.MultiheadAttention):
        m = QuantMultiheadAttention.from_float(m)
    if m.bias_k is not None or m.bias_v is not None or m.add_zero_attn:
        raise _refuse(base, m, "bias_k / bias_v / add_zero_attn")
    h, hd, e = m.num_heads, m.head_dim, m.embed_dim
    heads = g.const(f"{base}.heads_shape", [0, 0, h, hd], np.int64)

    def proj(lin: nn.Module, x: str, name: str, perm: list[int]) -> str:
        y = _ox._linear(ctx, lin, x, f"{base}.{name}", _RANK3)
        return g.op("Transpose", [g.op("Reshape", [y, heads], base)], base, perm=perm)

    q = proj(m.q_proj, q_in, "q_proj", [1, 2, 0, 3])  # [B, h, T, hd]
    k = proj(m.k_proj, k_in, "k_proj", [1, 2, 3, 0])  # [B, h, hd, S]
    v = proj(m.v_proj, v_in, "v_proj", [1, 2, 0, 3])  # [B, h, S, hd]
    q = g.op("Mul", [q, g.const(f"{base}.scaling", np.float32(math.sqrt(1.0 / float(hd))))], base)
    w = g.op("Softmax", [g.op("MatMul", [q, k], base)], base, axis=-1)
    o = g.op("Transpose", [g.op("MatMul", [w, v], base)], base, perm=[2, 0, 1, 3])  # [T, B, h, hd]
    o = g.op("Reshape", [o, g.const(f"{base}.rows", [-1, e], np.int64)], base)  # PyTorch's out_proj input: [T * B, E]
    o = _ox._linear(ctx, m.out_proj, o, f"{base}.out_proj", _RANK2)
    o = g.op("Reshape", [o, g.const(f"{base}.out_shape", [seq_first_len, -1, e], np.int64)], base)
    wts = None
    if weights:
        wts = reduce_mean(ctx, w, [1], False, base) if average else w
    return o, wts


def reduce_mean(ctx: Any, x: str, axes: list[int], keepdims: bool, base: str) -> str:
    """ReduceMean over ``axes`` (an attribute before opset 18, an input from 18 on)."""
    g = ctx.g
    if ctx.opset < 18:
        return g.op("ReduceMean", [x], base, axes=[int(a) for a in axes], keepdims=int(keepdims))
    return g.op("ReduceMean", [x, g.const(f"{base}.axes", [int(a) for a in axes], np.int64)], base, keepdims=int(keepdims))


def _seq_first(ctx: Any, x: str, batch_first: bool, base: str) -> str:
    return ctx.g.op("Transpose", [x], base, perm=[1, 0, 2]) if batch_first else x


def _mha(ctx: Any, m: nn.Module, node: torch.fx.Node, env: dict, base: str) -> tuple:
    _no_extra(node, m, base, 3, ("need_weights", "average_attn_weights"))
    shapes = [ctx.shapes.get(a.name) if isinstance(a, torch.fx.Node) else None for a in node.args[:3]]
    if len(node.args) < 3 or any(s is None or len(s) != 3 for s in shapes):
        raise _refuse(base, m, "a call without three batched 3-D tensors (query, key, value)")
    bf = m.batch_first
    q, k, v = (_seq_first(ctx, _ox._arg_name(ctx, env, a, base), bf, base) for a in node.args[:3])
    t_len = shapes[0][1] if bf else shapes[0][0]
    need = bool(node.kwargs.get("need_weights", True)) and any(
        u.target is operator.getitem and u.args[1] == 1 for u in node.users)
    o, wts = _attention(ctx, m, q, k, v, base, int(t_len), need, bool(node.kwargs.get("average_attn_weights", True)))
    return (_seq_first(ctx, o, bf, base), wts)


def _act(ctx: Any, layer: nn.Module, x: str, base: str) -> str:
    a = layer.activation
    if a is F.relu or isinstance(a, nn.ReLU):
        return ctx.g.op("Relu", [x], base)
    if a is F.gelu:
        return gelu(ctx, x, base)
    if isinstance(a, nn.GELU):
        return gelu(ctx, x, base, a.approximate)
    raise ValueError(f"layer {base!r}: activation {a!r} has no ONNX form (ReLU and GELU do)")


def _encoder_layer(ctx: Any, layer: nn.TransformerEncoderLayer, x: str, base: str, t_len: int) -> str:
    g = ctx.g
    bf = layer.self_attn.batch_first

    def sa(y: str) -> str:
        s = _seq_first(ctx, y, bf, base)
        o, _ = _attention(ctx, layer.self_attn, s, s, s, f"{base}.self_attn", t_len, False, False)
        return _seq_first(ctx, o, bf, base)

    def ff(y: str) -> str:
        y = _act(ctx, layer, _ox._linear(ctx, layer.linear1, y, f"{base}.linear1", _RANK3), f"{base}.activation")
        return _ox._linear(ctx, layer.linear2, y, f"{base}.linear2", _RANK3)

    n1 = lambda y: layer_norm(ctx, layer.norm1, y, f"{base}.norm1")  # noqa: E731
    n2 = lambda y: layer_norm(ctx, layer.norm2, y, f"{base}.norm2")  # noqa: E731
    if layer.norm_first:
        x = g.op("Add", [x, sa(n1(x))], base)
        return g.op("Add", [x, ff(n2(x))], base)
    x = n1(g.op("Add", [x, sa(x)], base))
    return n2(g.op("Add", [x, ff(x)], base))


def _encoder(ctx: Any, m: nn.Module, node: torch.fx.Node, env: dict, base: str) -> str:
    _no_extra(node, m, base)
    shape = ctx.shapes.get(node.args[0].name) if isinstance(node.args[0], torch.fx.Node) else None
    if shape is None or len(shape) != 3:
        raise _refuse(base, m, "a call without a batched 3-D input")
    x = _ox._arg_name(ctx, env, node.args[0], base)
    if isinstance(m, nn.TransformerEncoderLayer):
        return _encoder_layer(ctx, m, x, base, int(shape[1] if m.self_attn.batch_first else shape[0]))
    for i, layer in enumerate(m.layers):
        x = _encoder_layer(ctx, layer, x, f"{base}.layers.{i}", int(shape[1] if layer.self_attn.batch_first else shape[0]))
    return layer_norm(ctx, m.norm, x, f"{base}.norm") if m.norm is not None else x


def seq_module(ctx: Any, m: nn.Module, node: torch.fx.Node, env: dict, base: str) -> Any:
    """The ONNX form of a sequence leaf module (a tensor name, or a tuple of them as the module returns)."""
    if isinstance(m, nn.LayerNorm):
        _no_extra(node, m, base)
        return layer_norm(ctx, m, _ox._arg_name(ctx, env, node.args[0], base), base)
    if isinstance(m, nn.GELU):
        return gelu(ctx, _ox._arg_name(ctx, env, node.args[0], base), base, m.approximate)
    if isinstance(m, nn.Embedding):
        _no_extra(node, m, base)
        return _embedding(ctx, m, _ox._arg_name(ctx, env, node.args[0], base), base)
    if isinstance(m, (_QuantRNN, nn.LSTM, nn.GRU)):
        _no_extra(node, m, base)
        shape = ctx.shapes.get(node.args[0].name) if isinstance(node.args[0], torch.fx.Node) else None
        return _rnn(ctx, m, _ox._arg_name(ctx, env, node.args[0], base), base, len(shape) if shape else 0)
    if isinstance(m, (QuantMultiheadAttention, nn.MultiheadAttention)):
        return _mha(ctx, m, node, env, base)
    if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerEncoder, LowbitTransformerEncoderLayer, LowbitTransformerEncoder)):
        return _encoder(ctx, m, node, env, base)
    raise ValueError(f"module {base!r} ({type(m).__name__}) has no ONNX form in lowbit's exporter")  # pragma: no cover
