"""Lowering: a quantized PyTorch model -> an integer program (what the C code and the reference run).

The integer pipeline, per compute layer (Linear, Conv1d or Conv2d of any kernel, stride,
padding, dilation and groups -- depthwise and pointwise included; a Conv1d is a 1 x k Conv2d):

1. ``acc[c] = sum_k a[k] * w[c, k]`` in int32. ``a`` are the layer's integer inputs
   (int8, unsigned 0..255 after a ReLU), ``w`` the integer weights: two's complement
   values (8-bit), ``off + step * code`` for evenly spaced levels (uniform 1..4-bit,
   ternary, binary, ``<b>bitsym``: the sum is computed as ``off * sum(a) + step * sum(a * code)``),
   ``lut[code]`` for other codebooks (NF4, pot: an int8 table per layer, levels times
   a factor ``t``), or ``table[a][code]`` for the 4.6-bit pairs (an int8 product table).
2. ``y[c] = acc[c] * M[c] + B[c]`` in int32: ``M[c] = round(2^S * s_in * s_w[c] / (t * s_out))``
   (int16) folds the per-channel weight scale, the input and output activation scales and an
   unfolded BatchNorm's factor; ``B[c] = round(2^S * bias[c] / s_out)`` folds the bias and
   BatchNorm's shift. ``S`` (per layer) is the largest shift for which ``M`` fits in 15 bits
   and ``y`` cannot overflow int32 given the worst-case ``|acc|``.
3. requantization: ``out = clamp(round_shift(y, S), lo, hi)`` with
   ``round_shift(y, s) = (y >> s) + ((y >> (s - 1)) & 1)`` (round half up, no overflow);
   ``lo = 0`` fuses the ReLU. ``s_out`` is the next layer's input scale: its frozen
   activation quantizer's, or ``max|x| / hi`` over the calibration data ("static").
   ``shift="dynamic"`` (BitNetMCU's ReLUNorm) instead takes the smallest shift that brings
   the layer's largest output within ``hi`` (at least ``S - headroom``); later biases
   follow the accumulated difference ``D`` of the shifts (``B * 2^-D``).
4. the last layer's ``y`` are the int32 logits (no shift): ``logit = y * logit_scale``.

Max-pooling runs on the requantized integers (it commutes with a monotone requantization).
Average pooling (AvgPool, AdaptiveAvgPool to an output size that divides the input, global
average pooling) also runs on them, at the scale of the layer it feeds: ``sum`` over the window
(int32), then ``out = clamp(round_shift(sum * m, s), lo, hi)``; for a window of ``2^k`` values
``m = 1, s = k`` (the exact mean, rounded half up), otherwise ``m = round(2^s / count)`` with the
largest ``s <= 30`` for which ``sum * m`` cannot leave int32 (the C code and the reference both do this).

Traced models with skip connections (``lowbit.graph``'s GraphModules, e.g. ResNet-8) take the
graph path in :mod:`.residual`: the same compute ops plus residual adds, each op naming its inputs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from ...formats import Codebook, Uniform
from ...nn.act import ActQuant
from ...nn.layers import QuantLayer
from ...qtensor import QTensor
from .pairs import pair46

__all__ = ["ComputeOp", "PoolOp", "AddOp", "IntProgram", "lower", "SUPPORTED_LAYERS", "INT32_MAX", "avg_multiplier"]

INT32_MAX = 2**31 - 1
SUPPORTED_LAYERS = (
    "Linear, Conv1d/Conv2d (any kernel, stride, dilation, groups incl. depthwise; zero padding, symmetric or 'same'), "
    "MaxPool1d/2d and AvgPool1d/2d (no padding, floor mode), AdaptiveAvgPool1d/2d (output size dividing the input; "
    "1 = global average), ReLU, BatchNorm1d/2d (directly after a Linear/Conv), Flatten, Dropout, Identity, "
    "and in traced (torch.fx / lowbit.graph) models residual adds (x + y, torch.add) and F.relu / torch.flatten"
)
_MAX_SHIFT = 30
#: multipliers are stored as int16: 15 bits of precision (relative error <= 2^-15) is plenty
MAX_MULT = 2**15 - 1
#: extra bits reserved for the bias in dynamic mode (a later layer may shift up to this much less)
DYNAMIC_HEADROOM = 4


@dataclass
class ComputeOp:
    """One Linear or Conv layer in integer form (a Conv1d is a ``(1, k)`` conv on ``(c, 1, length)``)."""

    name: str
    op: str  # "dense" | "conv"
    kind: str  # "i8" | "p4" | "p2" | "p1" | "t3" | "l4" | "pt"
    codes: np.ndarray  # [cout, n] storage codes (values for "i8")
    values: np.ndarray  # [cout, n] integer weights
    off: int
    step: int
    lut: np.ndarray | None  # int8[16] for "l4"
    pt_lo: int  # 4.6-bit: the table's first row is for activation value pt_lo (rows pt_lo..in_hi)
    pt_stride: int  # 4.6-bit: table row length (power of two >= nw)
    pt_table: np.ndarray | None  # int8 [in_hi - pt_lo + 1, stride]: table[x - pt_lo][code] = x * w(code)
    mult: np.ndarray  # int32 [cout]
    bias: np.ndarray  # int32 [cout]
    shift: int
    in_lo: int
    in_hi: int
    out_lo: int
    out_hi: int
    in_shape: tuple[int, ...]  # (n,) for dense, (cin, h, w) for conv
    out_shape: tuple[int, ...]
    pad: "int | tuple[int, int, int, int]" = 0  # conv zero padding: all sides, or (top, left, bottom, right)
    last: bool = False
    weight_format: str = ""
    code_bits: int = 8  # storage bits per weight in the C arrays (1.6 for t3 is stored as 8 per 5)
    t: float = 1.0  # integer weights = levels * t
    kernel: tuple[int, int] = (3, 3)  # conv (kh, kw)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1  # conv groups (cin = depthwise): row c reads input channels of group c // (cout / groups)
    src: "tuple[int, ...] | None" = None  # graph programs: the op whose output is the input (-1: the model input)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """Conv zero padding as (top, left, bottom, right)."""
        return (self.pad,) * 4 if isinstance(self.pad, int) else tuple(int(v) for v in self.pad)  # type: ignore[return-value]

    @property
    def n(self) -> int:
        """Inputs per output (row length)."""
        return int(self.codes.shape[1])

    @property
    def cout(self) -> int:
        """Output channels (features)."""
        return int(self.codes.shape[0])

    @property
    def positions(self) -> int:
        """Output positions per channel (1 for dense)."""
        return 1 if self.op == "dense" else int(self.out_shape[1] * self.out_shape[2])

    @property
    def affine(self) -> bool:
        """True when the kernel returns ``sum(a * code)`` and the layer applies ``off``/``step``."""
        return self.kind in ("p4", "p2", "p1", "t3")


@dataclass
class PoolOp:
    """Max or average pooling (``kind``) on ``(c, h, w)`` integers; average: ``clamp(round_shift(sum * mult, shift), lo, hi)``."""

    name: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    signed: bool
    kind: str = "max"  # "max" | "avg"
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    mult: int = 1
    shift: int = 0
    lo: int = 0
    hi: int = 255
    src: "tuple[int, ...] | None" = None


@dataclass
class AddOp:
    """Residual add: both int8 inputs requantized to the output's scale, ``clamp(round_shift(a * ma + b * mb, shift), lo, hi)``."""

    name: str
    shape: tuple[int, ...]
    ma: int
    mb: int
    shift: int
    lo: int
    hi: int
    a_signed: bool
    b_signed: bool
    src: tuple[int, int] = (-1, -1)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of each input (the same as the output)."""
        return self.shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the output."""
        return self.shape


@dataclass
class IntProgram:
    """An integer-only model: input quantization, ops, and how to read the logits."""

    input_shape: tuple[int, ...]
    input_scale: float
    input_lo: int
    input_hi: int
    ops: list = field(default_factory=list)
    dynamic: bool = False
    logit_scale: float = 1.0
    headroom: int = DYNAMIC_HEADROOM

    @property
    def graph(self) -> bool:
        """True when ops name their inputs (skip connections), not each the previous op's output."""
        return any(getattr(o, "src", None) is not None for o in self.ops)

    @property
    def compute_ops(self) -> list[ComputeOp]:
        """The Linear/Conv ops in order."""
        return [o for o in self.ops if isinstance(o, ComputeOp)]

    @property
    def num_outputs(self) -> int:
        """Number of logits."""
        last = self.compute_ops[-1]
        return last.cout * last.positions

    @property
    def input_size(self) -> int:
        """Number of input integers."""
        return int(math.prod(self.input_shape))

    def quantize_input(self, x: "Tensor | np.ndarray") -> np.ndarray:
        """Float inputs ``[N, *input_shape]`` -> integers ``clamp(round(x / input_scale))`` (int64 array)."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if xt.dim() == len(self.input_shape):
            xt = xt[None]
        if tuple(xt.shape[1:]) != tuple(self.input_shape) and xt[0].numel() != self.input_size:
            raise ValueError(f"x must have shape [N, {', '.join(map(str, self.input_shape))}], got {tuple(xt.shape)}")
        if not torch.isfinite(xt).all():
            raise ValueError("x contains NaN or Inf values")
        # torch.round (half to even) is what the fake-quantized model's input quantizer uses.
        q = torch.clamp(torch.round(xt / self.input_scale), self.input_lo, self.input_hi)
        return q.reshape(xt.shape[0], -1).to(torch.int64).numpy()


# --------------------------------------------------------------------------- model walking


_SKIP = (nn.Identity, nn.Dropout, nn.Flatten)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, mod: nn.Module) -> None:
        kids = list(mod.named_children())
        is_leaf = isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, QuantLayer, ActQuant)) or not kids
        if is_leaf:
            out.append((prefix, mod))
            return
        for n, c in kids:
            walk(f"{prefix}.{n}" if prefix else n, c)

    walk("", model)
    return out


def _unsupported(name: str, mod: nn.Module, why: str = "") -> ValueError:
    extra = f": {why}" if why else ""
    return ValueError(f"layer {name!r} ({type(mod).__name__}) is not supported by the MCU target{extra}; supported: {SUPPORTED_LAYERS}")


_CONV = (nn.Conv1d, nn.Conv2d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_POOLS = (*_MAXPOOL, *_AVGPOOL, *_ADAPTIVE)


def _pair(v: object) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),)  # type: ignore[arg-type]


def _check_layer(name: str, mod: nn.Module) -> None:
    if isinstance(mod, (nn.Linear, *_CONV)) and not isinstance(mod, QuantLayer):
        raise ValueError(f"layer {name!r} ({type(mod).__name__}) is not quantized; quantize the model (lowbit.quantize / prepare_qat) before export")
    if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Conv3d)):
        raise _unsupported(name, mod)
    if isinstance(mod, _CONV):
        if mod.padding_mode != "zeros":
            raise _unsupported(name, mod, f"padding_mode {mod.padding_mode!r} (only zero padding)")
    elif isinstance(mod, _POOLS):
        if isinstance(mod, _ADAPTIVE):
            return  # the output size is checked against the input shape when lowering
        if any(p != 0 for p in _pair(mod.padding)) or mod.ceil_mode:
            raise _unsupported(name, mod, "pooling with padding or ceil_mode")
        if isinstance(mod, _MAXPOOL) and any(d != 1 for d in _pair(mod.dilation)):
            raise _unsupported(name, mod, "dilated max-pooling")
        if isinstance(mod, _AVGPOOL) and getattr(mod, "divisor_override", None) is not None:
            raise _unsupported(name, mod, "divisor_override")
    elif isinstance(mod, nn.Linear) or isinstance(mod, (nn.ReLU, *_BN, *_SKIP)):
        pass
    else:
        raise _unsupported(name, mod)


@dataclass
class _Block:
    name: str
    mod: nn.Module
    bn: nn.Module | None = None
    relu: bool = False


def _parse(model: nn.Module) -> list[object]:
    """Group the leaves: compute blocks (layer + BN + ReLU) and pools, in order."""
    seq: list[object] = []
    last_block: _Block | None = None
    since_compute: list[str] = []  # what came after the last compute layer
    for name, mod in _leaves(model):
        _check_layer(name, mod)
        if isinstance(mod, (nn.Linear, *_CONV)):
            last_block = _Block(name, mod)
            seq.append(last_block)
            since_compute = []
        elif isinstance(mod, _BN):
            if last_block is None or since_compute:
                raise _unsupported(name, mod, "a BatchNorm must directly follow a Linear/Conv2d to be folded")
            last_block.bn = mod
        elif isinstance(mod, nn.ReLU):
            if last_block is None:
                raise _unsupported(name, mod, "a ReLU before the first Linear/Conv")
            if "avg" in since_compute:  # the ReLU is fused into the requantization before the pool
                raise _unsupported(name, mod, "a ReLU after an average pool (put it before the pool)")
            last_block.relu = True
            since_compute.append("relu")
        elif isinstance(mod, _POOLS):
            seq.append((name, mod))
            since_compute.append("max" if isinstance(mod, _MAXPOOL) else "avg")
        # Identity, Dropout, Flatten: nothing to do (eval mode)
    blocks = [b for b in seq if isinstance(b, _Block)]
    if not blocks:
        raise ValueError("model has no Linear or Conv2d layer to export")
    tail = seq[seq.index(blocks[-1]) + 1 :]
    if tail or blocks[-1].relu:
        raise ValueError(f"the last layer {blocks[-1].name!r} must give the logits: no ReLU or pooling after it")
    return seq


@torch.no_grad()
def _run_leaves(seq: list[object], x: Tensor, capture: dict[str, list[Tensor]] | None) -> Tensor:
    """Run the parsed sequence in float (the fake-quantized layers themselves); capture layer inputs."""
    for item in seq:
        if isinstance(item, _Block):
            if isinstance(item.mod, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            if capture is not None:
                capture.setdefault(item.name, []).append(x)
            x = item.mod(x)
            if item.bn is not None:
                x = item.bn(x)
            if item.relu:
                x = torch.relu(x)
        else:
            x = item[1](x)
    return x


# --------------------------------------------------------------------------- weights


@dataclass
class _Weights:
    kind: str
    codes: np.ndarray
    values: np.ndarray
    off: int
    step: int
    lut: np.ndarray | None
    t: float
    scale: np.ndarray  # per output channel
    nlevels: int
    code_bits: int
    pt_nw: int = 0


def _integral(v: np.ndarray) -> bool:
    return bool(np.all(np.abs(v - np.round(v)) < 1e-5))


def _lut_factor(levels: np.ndarray) -> float:
    """The factor t in 1..127/max|level| whose rounded levels*t are closest (relative) to the levels."""
    top = float(np.abs(levels).max())
    best_t, best_err = 1.0, math.inf
    for t in range(1, int(127 // top) + 1):
        err = float(np.abs(levels * t - np.round(levels * t)).max()) / t
        if err <= best_err + 1e-12:
            best_t, best_err = float(t), err
    return best_t


def _decode_weights(name: str, qt: QTensor, ternary: str) -> _Weights:
    cout = int(qt.shape[0])
    n = int(qt.numel // cout)
    if qt.zero_point is not None and bool((qt.zero_point != 0).any()):
        raise ValueError(f"layer {name!r}: weights with zero points ({qt.fmt.spec}) are not supported; use a signed (symmetric) format")
    g = qt.granularity
    ns = int(qt.scale.numel())
    if g.kind == "tensor":
        scale = np.full(cout, float(qt.scale[0]), dtype=np.float64)
    elif (g.kind == "channel" and g.axis in (0, -len(qt.shape))) or (g.kind == "group" and g.size == n):
        scale = qt.scale.double().numpy().reshape(cout)
    else:
        raise ValueError(
            f"layer {name!r}: weight granularity {g.spec!r} is not supported (the integer dot product needs one "
            "scale per output channel); quantize with 'tensor' or 'channel' granularity"
        )
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError(f"layer {name!r}: weight scales must be finite and > 0")
    fmt = qt.fmt
    if isinstance(fmt, Uniform):
        if not fmt.signed:
            raise ValueError(f"layer {name!r}: unsigned weight format {fmt.spec!r} is not supported; use int<b>")
        values = qt.int_repr().reshape(cout, n).numpy().astype(np.int64)
        codes = values - fmt.qmin
        if fmt.bits >= 5:
            return _Weights("i8", values, values, 0, 1, None, 1.0, scale, fmt.qmax - fmt.qmin + 1, 8)
        kind, bits = {1: ("p1", 1), 2: ("p2", 2), 3: ("p4", 4), 4: ("p4", 4)}[fmt.bits]
        return _Weights(kind, codes, values, fmt.qmin, 1, None, 1.0, scale, fmt.qmax - fmt.qmin + 1, bits)
    if not isinstance(fmt, Codebook):
        raise ValueError(f"layer {name!r}: weight format {fmt.spec!r} is not supported")
    levels = fmt.levels.double().numpy()
    nl = len(levels)
    codes = g.from_rows(qt.codes().to(torch.int64), qt.shape).reshape(cout, n).numpy().astype(np.int64)
    if fmt.pair_q is not None:  # the 4.6-bit pairs (the format says so): integer levels -Qw..Qw through a product table
        values = np.round(levels[codes]).astype(np.int64)
        bits = 4 if nl <= 16 else 8
        return _Weights("pt", codes, values, 0, 1, None, 1.0, scale, nl, bits, pt_nw=nl)
    if nl > 16:
        raise ValueError(f"layer {name!r}: codebook {fmt.spec!r} has {nl} levels; the MCU target takes at most 16 (4-bit codes)")
    # Evenly spaced levels that become small integers (ternary, binary, <b>bitsym) are affine.
    for t in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0):
        v = levels * t
        if _integral(v) and np.abs(v).max() <= 127:
            d = np.round(np.diff(v))
            if nl >= 2 and np.all(d == d[0]) and d[0] > 0:
                off, step = int(round(v[0])), int(d[0])
                values = off + step * codes
                if nl == 2:
                    kind, bits = "p1", 1
                elif nl == 3 and ternary == "base3":
                    kind, bits = "t3", 8
                elif nl <= 4:
                    kind, bits = "p2", 2
                else:
                    kind, bits = "p4", 4
                return _Weights(kind, codes, values, off, step, None, t, scale, nl, bits)
            break
    t = _lut_factor(levels)
    lut = np.zeros(16, dtype=np.int64)
    lut[:nl] = np.round(levels * t)
    return _Weights("l4", codes, lut[codes], 0, 1, lut, t, scale, nl, 4)


# --------------------------------------------------------------------------- activations


@dataclass
class _ActIn:
    scale: float
    lo: int
    hi: int


def _act_range(name: str, aq: ActQuant | None, data: Tensor, nonneg: bool, pt_q: int | None) -> _ActIn:
    """Integer range and scale of a layer's input: from its frozen quantizer, or calibrated (max)."""
    if aq is not None:
        q = aq.q
        if not q.frozen:
            raise ValueError(f"layer {name!r}: its input quantizer has no fixed scale; calibrate or convert the model first")
        if q.scale.numel() != 1:
            raise ValueError(f"layer {name!r}: per-channel activation scales are not supported (input {aq.spec!r})")
        if q.zero_point.numel() and int(q.zero_point.reshape(-1)[0]) != 0:
            raise ValueError(
                f"layer {name!r}: input quantizer {aq.spec!r} has zero point {int(q.zero_point.reshape(-1)[0])}; "
                "the MCU target needs zero point 0 (inputs >= 0, or a signed format)"
            )
        fmt = q.fmt
        if isinstance(fmt, Uniform):
            lo, hi = fmt.qmin, fmt.qmax
        elif isinstance(fmt, Codebook) and fmt.pair_q is not None:
            lo, hi = -fmt.pair_q, fmt.pair_q
        else:
            raise ValueError(f"layer {name!r}: activation format {fmt.spec!r} is not supported; use int8/uint8 or sym<N>")
        if pt_q is not None and (lo < -pt_q or hi > pt_q):
            raise ValueError(
                f"layer {name!r}: 4.6-bit weights need inputs within -{pt_q}..{pt_q} (products in int8); "
                f"its input quantizer {aq.spec!r} spans {lo}..{hi}"
            )
        if nonneg:
            lo = max(lo, 0)
        if lo < -128 or hi > 255 or (lo < 0 and hi > 127):
            raise ValueError(f"layer {name!r}: activation range {lo}..{hi} does not fit in 8 bits")
        return _ActIn(float(q.scale.reshape(-1)[0]), int(lo), int(hi))
    amax = float(data.abs().max()) if data.numel() else 0.0
    if not math.isfinite(amax):
        raise ValueError(f"layer {name!r}: calibration inputs contain NaN or Inf")
    nonneg = nonneg or bool(data.min() >= 0)
    if pt_q is not None:
        hi = pt_q
        lo = 0 if nonneg else -pt_q
    else:
        hi = 255 if nonneg else 127
        lo = 0 if nonneg else -128
    return _ActIn(amax / hi if amax > 0 else 1.0, lo, hi)


# --------------------------------------------------------------------------- geometry


def _as_chw(name: str, shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """``(c, h, w)``; a 1-D ``(c, length)`` signal is ``(c, 1, length)``."""
    if len(shape) == 2:
        return (int(shape[0]), 1, int(shape[1]))
    if len(shape) != 3:
        raise ValueError(f"layer {name!r}: {what} needs a (C, H, W) or (C, L) input, got shape {shape}")
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def _conv_geometry(name: str, mod: nn.Module, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], tuple[int, int, int], dict[str, object]]:
    """(in_shape, out_shape, ComputeOp geometry fields) of a Conv1d/Conv2d on ``shape``."""
    one_d = isinstance(mod, nn.Conv1d)
    c, h, w = _as_chw(name, shape, type(mod).__name__)
    if one_d and h != 1:
        raise ValueError(f"layer {name!r}: Conv1d needs a (C, L) input, got shape {shape}")
    if c != mod.in_channels:  # type: ignore[union-attr]
        raise ValueError(f"layer {name!r}: expects {mod.in_channels} input channels, gets shape {shape}")  # type: ignore[union-attr]
    lift = (lambda v: (1, int(v[0]))) if one_d else (lambda v: (int(v[0]), int(v[1])))
    kh, kw = lift(mod.kernel_size)  # type: ignore[union-attr]
    sh, sw = lift(mod.stride)  # type: ignore[union-attr]
    dh, dw = lift(mod.dilation)  # type: ignore[union-attr]
    # PyTorch's own padding amounts ('same' puts the odd one at the end): [left, right(, top, bottom)]
    rp = [int(v) for v in mod._reversed_padding_repeated_twice]  # type: ignore[union-attr]
    pl, pr = rp[0], rp[1]
    pt, pb = (0, 0) if one_d else (rp[2], rp[3])
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"layer {name!r}: input {shape} is too small for a {kh}x{kw} convolution")
    geo = {"pad": (pt, pl, pb, pr), "kernel": (kh, kw), "stride": (sh, sw), "dilation": (dh, dw), "groups": int(mod.groups)}  # type: ignore[union-attr]
    return (c, h, w), (int(mod.out_channels), oh, ow), geo  # type: ignore[union-attr]


def avg_multiplier(count: int, amax: int) -> tuple[int, int]:
    """(m, s) with ``round_shift(sum * m, s)`` ~ ``sum / count``: exact for powers of two, else the largest s <= 30 in int32."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count & (count - 1) == 0:
        return 1, count.bit_length() - 1
    for s in range(30, -1, -1):
        m = round(2.0**s / count)
        if m >= 1 and m * count * max(1, amax) <= INT32_MAX:
            return int(m), s
    raise ValueError(f"an average over {count} values of up to {amax} cannot be taken in int32")  # pragma: no cover


def _pool_op(name: str, mod: nn.Module, shape: tuple[int, ...], lo: int, hi: int) -> PoolOp:
    """A max/average pooling layer on ``shape`` whose integer inputs lie in ``lo..hi``."""
    c, h, w = _as_chw(name, shape, type(mod).__name__)
    one_d = isinstance(mod, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d))
    if one_d and h != 1:
        raise ValueError(f"layer {name!r}: {type(mod).__name__} needs a (C, L) input, got shape {shape}")
    if isinstance(mod, _ADAPTIVE):
        osz = _pair(mod.output_size)
        oh, ow = (1, osz[0]) if one_d else ((osz * 2) if len(osz) == 1 else osz)[:2]
        oh = h if oh is None else oh
        ow = w if ow is None else ow
        if h % oh or w % ow:
            raise _unsupported(name, mod, f"output size {(oh, ow)} does not divide the input {(h, w)} (windows would differ)")
        kh, kw, sh, sw = h // oh, w // ow, h // oh, w // ow
    else:
        k, st = _pair(mod.kernel_size), _pair(mod.stride if mod.stride is not None else mod.kernel_size)
        if one_d:
            (kh, kw), (sh, sw) = (1, k[0]), (1, st[0])
        else:
            kh, kw = (k * 2)[:2]
            sh, sw = (st * 2)[:2]
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"layer {name!r}: input {shape} is too small for a {kh}x{kw} pool")
    kind = "max" if isinstance(mod, _MAXPOOL) else "avg"
    m, s = avg_multiplier(kh * kw, max(abs(lo), abs(hi))) if kind == "avg" else (1, 0)
    return PoolOp(name, (c, h, w), (c, oh, ow), lo < 0, kind, (kh, kw), (sh, sw), m, s, int(lo), int(hi))


# --------------------------------------------------------------------------- lowering


def _choose_shift(name: str, ratio: np.ndarray, bias_u: np.ndarray, accb: np.ndarray, bias_gain: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The largest S for which ``|M| <= MAX_MULT`` and ``|acc| * |M| + |B| * bias_gain`` stays in int32; returns (M, B, S)."""
    for s in range(_MAX_SHIFT, -1, -1):
        mult = np.round(ratio * 2.0**s)
        bias = np.round(bias_u * 2.0**s)
        worst = accb.astype(np.float64) * np.abs(mult) + np.abs(bias) * bias_gain
        if worst.max() <= INT32_MAX and np.abs(mult).max() <= MAX_MULT:
            return mult.astype(np.int64), bias.astype(np.int64), s
    raise ValueError(
        f"layer {name!r}: the requantization cannot be done in int32 (output scale too small for the "
        f"accumulator range {int(accb.max())}); recalibrate the activations"
    )


def _as_batches(calib: object) -> Tensor:
    if calib is None:
        raise ValueError("calib is required: pass calibration inputs (a tensor or batches) for the activation ranges")
    if isinstance(calib, Tensor):
        return calib.float()
    if isinstance(calib, np.ndarray):
        return torch.as_tensor(calib, dtype=torch.float32)
    xs: list[Tensor] = []
    for b in calib:  # type: ignore[union-attr]
        if isinstance(b, (list, tuple)):
            b = b[0]
        if not isinstance(b, Tensor):
            raise TypeError(f"calib batches must be tensors or (inputs, targets) tuples, got {type(b).__name__}")
        xs.append(b.float())
    if not xs:
        raise ValueError("calib gave no batches")
    return torch.cat(xs)


def _structure_inputs(model: nn.Module, seq: list[object]) -> Tensor:
    """Without calibration data: random inputs, enough only when every layer's input scale is already fixed."""
    missing = [b.name for b in seq if isinstance(b, _Block) and getattr(b.mod, "input_quant", None) is None]
    if missing:
        raise ValueError(
            f"calib is required: layer {missing[0]!r} has no input quantizer, so its activation range must be "
            "calibrated; pass calib=<inputs> (or quantize with an activation spec such as 'w4,a8')"
        )
    from ...info import info_of

    arch = info_of(model).arch
    if not arch or "input_shape" not in arch:
        raise ValueError("calib is required: the model does not record its input shape (not a lowbit reference model)")
    gen = torch.Generator().manual_seed(0)
    return torch.rand((16, *[int(s) for s in arch["input_shape"]]), generator=gen)


def prepare(model: nn.Module) -> nn.Module:
    """A converted (frozen, eval-mode) copy of a quantized model; converted models are copied as they are."""
    from ...api import convert

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    if layers and not all(m.converted for m in layers):
        model = convert(model)
    else:
        model = copy.deepcopy(model)
    model.eval()
    return model


def _edge_culprit(model: nn.Module, err: str) -> str:
    """What puts a graph-path model off the plain sequence: its first functional op, named (else the edge quantizer)."""
    from ...graph import EDGE_FUNCTIONS, EDGE_METHODS

    graph = getattr(model, "graph", None)
    for n in graph.nodes if graph is not None else ():
        if (n.op == "call_function" and n.target in EDGE_FUNCTIONS) or (n.op == "call_method" and n.target in EDGE_METHODS):
            return f"the functional op {n.name!r} ({getattr(n.target, '__name__', n.target)})"
    start = err.find("'lowbit_acts.")
    return "the activation quantizer " + (err[start : err.find("'", start + 1) + 1] if start >= 0 else "'lowbit_acts'")


@torch.no_grad()
def _divergent_layer(model: nn.Module, seq: list[object], x: Tensor, capture: dict[str, list[Tensor]]) -> str:
    """Name the first layer whose input in the model's own forward is not what the plain sequence gives it."""
    seen: dict[str, Tensor] = {}
    blocks = [b for b in seq if isinstance(b, _Block)]
    hooks = [b.mod.register_forward_pre_hook(lambda m, a, n=b.name: seen.setdefault(n, a[0])) for b in blocks]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    for b in blocks:
        ours, real = capture[b.name][0], seen.get(b.name)
        if real is None or ours.numel() != real.numel() or not torch.allclose(ours.reshape(-1), real.reshape(-1), rtol=1e-4, atol=1e-4):
            return f"layer {b.name!r} does not receive the previous layer's output"
    return f"the output is not the last layer {blocks[-1].name!r}'s"


def _compute_op(b: _Block, w: _Weights, a: _ActIn, shape: tuple[int, ...], out: "_ActIn | None", dynamic: bool) -> tuple[ComputeOp, float]:
    """One compute block in integers and its logit scale: input range ``a``, output range ``out`` (None: the int32 logits)."""
    mod = b.mod
    last = out is None
    geo: dict[str, object] = {}
    if isinstance(mod, _CONV):
        in_shape, out_shape, geo = _conv_geometry(b.name, mod, shape)
        op, pad = "conv", geo.pop("pad")
    else:
        nin = int(math.prod(shape))
        if nin != mod.in_features:  # type: ignore[union-attr]
            raise ValueError(f"layer {b.name!r}: expects {mod.in_features} inputs, gets {nin} (shape {shape})")  # type: ignore[union-attr]
        in_shape, out_shape, op, pad = (nin,), (mod.out_features,), "dense", 0  # type: ignore[union-attr]

    # Worst-case accumulator: every intermediate of the C kernel must fit int32.
    amax = max(abs(a.lo), abs(a.hi))
    n = w.codes.shape[1]
    accb = np.abs(w.values).sum(axis=1) * amax
    inter = [int(accb.max())]
    if w.kind in ("p4", "p2", "p1", "t3"):
        inter += [abs(w.off) * n * amax, abs(w.step) * int(w.codes.max(initial=0)) * n * amax]
    worst = max(inter)
    if worst > INT32_MAX:
        raise ValueError(
            f"layer {b.name!r}: int32 accumulation can overflow: |sum| up to {worst:,} > {INT32_MAX:,} "
            f"({n} inputs x |a| <= {amax} x |w| <= {int(np.abs(w.values).max())}); split the layer or use fewer bits"
        )

    # Fold scales, bias and an unfolded BatchNorm into M, B.
    bias = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(w.codes.shape[0])
    gain = np.ones(w.codes.shape[0])
    if b.bn is not None:
        bn = b.bn
        inv = 1.0 / np.sqrt(bn.running_var.double().numpy() + bn.eps)  # type: ignore[union-attr]
        gam = bn.weight.detach().double().numpy() if bn.affine else np.ones_like(inv)  # type: ignore[union-attr]
        bet = bn.bias.detach().double().numpy() if bn.affine else np.zeros_like(inv)  # type: ignore[union-attr]
        gain = gam * inv
        bias = bet + (bias - bn.running_mean.double().numpy()) * gain  # type: ignore[union-attr]
    wscale = a.scale * w.scale / w.t * gain  # real value of one accumulator unit, per channel
    if out is None:
        s_out = float(np.abs(wscale).max()) or 1.0
        out_lo, out_hi = -(2**31), INT32_MAX
    else:
        s_out, out_lo, out_hi = out.scale, out.lo, out.hi
    bias_gain = 2**DYNAMIC_HEADROOM if dynamic else 1
    mult, bq, s = _choose_shift(b.name, wscale / s_out, bias / s_out, accb, bias_gain)
    pt_lo, pt_stride, pt_table = 0, 0, None
    if w.kind == "pt":
        qw = (w.pt_nw - 1) // 2
        pt_lo = a.lo
        pt_stride = 1 << max(0, math.ceil(math.log2(w.pt_nw)))
        xs = np.arange(a.lo, a.hi + 1)[:, None]
        ws = np.arange(-qw, qw + 1)[None, :]
        pt_table = np.zeros((a.hi - a.lo + 1, pt_stride), dtype=np.int64)
        pt_table[:, : w.pt_nw] = xs * ws
    cop = ComputeOp(
            name=b.name, op=op, kind=w.kind, codes=w.codes, values=w.values, off=w.off, step=w.step, lut=w.lut,
            pt_lo=pt_lo, pt_stride=pt_stride, pt_table=pt_table, mult=mult, bias=bq, shift=s,
            in_lo=a.lo, in_hi=a.hi, out_lo=int(out_lo), out_hi=int(out_hi), in_shape=tuple(in_shape),
            out_shape=tuple(out_shape), pad=pad, last=last, weight_format=mod.encode_weight().fmt.spec,  # type: ignore[union-attr]
            code_bits=w.code_bits, t=w.t, **geo,  # type: ignore[arg-type]
        )
    return cop, s_out / 2.0**s  # logit = y * the second (last layer)


def _has_skip(model: nn.Module) -> bool:
    """True for a traced model whose graph adds two tensors (a skip connection)."""
    from .residual import _ADDS

    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any((n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "__add__"))
               for n in model.graph.nodes)


def _has_edge_quant(model: nn.Module) -> bool:
    return any(isinstance(m, ActQuant) and name.startswith("lowbit_acts") for name, m in model.named_modules())


def _lower_traced(model: nn.Module, calib: object, shift: str, ternary: str) -> IntProgram:
    """The graph path (:mod:`.residual`) for traced models with skip connections or edge quantizers."""
    from .residual import lower_graph

    if shift != "static":
        raise ValueError("shift='dynamic' is not supported for models with skip connections (traced graphs); use shift='static'")
    x = _structure_inputs(model, []) if calib is None else _as_batches(calib)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"calib must be a batch of inputs [N, ...], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("calib contains NaN or Inf values")
    return lower_graph(model, x, ternary=ternary)  # type: ignore[arg-type]


@torch.no_grad()
def lower(
    model: nn.Module,
    calib: "Tensor | np.ndarray | Iterable[object] | None" = None,
    *,
    shift: str = "static",
    ternary: str = "base3",
) -> IntProgram:
    """Turn a quantized model (PTQ, QAT or converted) into an :class:`IntProgram`; ``calib``: inputs for the activation ranges.

    ``calib`` may be left out when every layer has a frozen input quantizer (``a8`` configs)
    and the model is a lowbit reference model (it records its input shape).
    """
    if shift not in ("static", "dynamic"):
        raise ValueError(f"shift must be 'static' or 'dynamic', got {shift!r}")
    if ternary not in ("base3", "2bit"):
        raise ValueError(f"ternary must be 'base3' or '2bit', got {ternary!r}")
    model = prepare(model)
    if _has_skip(model) or (isinstance(model, torch.fx.GraphModule) and _has_edge_quant(model)):
        return _lower_traced(model, calib, shift, ternary)
    try:
        seq = _parse(model)
    except ValueError as e:
        if "'lowbit_acts." not in str(e):
            raise
        # the graph path's edge quantizers (lowbit.graph): every layer before them was supported
        raise ValueError(
            f"the model's forward is not the plain sequence of its layers: {_edge_culprit(model, str(e))} sits on a "
            "graph edge (skip connections, functional ops); the MCU target takes sequential models"
        ) from None
    if calib is None:
        x = _structure_inputs(model, seq)
    else:
        x = _as_batches(calib)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"calib must be a batch of inputs [N, ...], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("calib contains NaN or Inf values")
    capture: dict[str, list[Tensor]] = {}
    try:
        ours = _run_leaves(seq, x, capture)
    except RuntimeError as e:
        raise ValueError(f"calib inputs of shape {tuple(x.shape[1:])} do not fit the model: {e}") from None
    ref = model(x)
    if ours.shape != ref.shape or not torch.allclose(ours, ref, rtol=1e-4, atol=1e-4):
        raise ValueError(
            f"the model's forward is not the plain sequence of its layers: {_divergent_layer(model, seq, x, capture)} "
            f"(skip connections, functional ops?); the MCU target runs only sequential models of: {SUPPORTED_LAYERS}"
        )
    blocks = [b for b in seq if isinstance(b, _Block)]
    inputs = {k: torch.cat(v) for k, v in capture.items()}
    dynamic = shift == "dynamic"

    # Input ranges of every compute layer (and the weights that decide the 4.6-bit ranges).
    weights: dict[str, _Weights] = {}
    acts: dict[str, _ActIn] = {}
    prev_relu = False
    for b in blocks:
        qt = b.mod.encode_weight()  # type: ignore[union-attr]
        if qt is None:
            raise ValueError(f"layer {b.name!r} ({type(b.mod).__name__}) has no quantized weight; give it a weight spec")
        w = _decode_weights(b.name, qt, ternary)
        pt_q = None
        if w.kind == "pt":
            qw = (w.pt_nw - 1) // 2
            aq = b.mod.input_quant  # type: ignore[union-attr]
            if aq is not None and isinstance(aq.q.fmt, Codebook) and aq.q.fmt.pair_q is not None:
                pt_q = aq.q.fmt.pair_q
            else:  # the widest activation operand the weights pair with
                pt_q = (pair46(w.pt_nw).nx - 1) // 2
            if pt_q * qw > 127:
                raise ValueError(f"layer {b.name!r}: the pair ({2 * pt_q + 1}, {w.pt_nw}) has products up to {pt_q * qw} > 127 (int8)")
        weights[b.name] = w
        acts[b.name] = _act_range(b.name, b.mod.input_quant, inputs[b.name], prev_relu, pt_q)  # type: ignore[union-attr]
        prev_relu = b.relu

    first = acts[blocks[0].name]
    prog = IntProgram(tuple(int(s) for s in x.shape[1:]), first.scale, first.lo, first.hi, dynamic=dynamic)
    shape: tuple[int, ...] = prog.input_shape
    bi = 0
    for item in seq:
        if not isinstance(item, _Block):
            prev = prog.ops[-1] if prog.ops else None
            if isinstance(prev, ComputeOp):
                lo, hi = prev.out_lo, prev.out_hi
            else:
                lo, hi = (prog.input_lo, prog.input_hi) if prev is None else (prev.lo, prev.hi)
            pool = _pool_op(item[0], item[1], shape, lo, hi)
            prog.ops.append(pool)
            shape = pool.out_shape
            continue
        b = item
        last = bi == len(blocks) - 1
        if last:
            out = None
        else:
            nxt = acts[blocks[bi + 1].name]
            out = _ActIn(nxt.scale, max(nxt.lo, 0) if b.relu else nxt.lo, nxt.hi)
        cop, logit_scale = _compute_op(b, weights[b.name], acts[b.name], shape, out, dynamic)
        if last:
            prog.logit_scale = logit_scale
        prog.ops.append(cop)
        shape = tuple(cop.out_shape)
        bi += 1
    return prog
