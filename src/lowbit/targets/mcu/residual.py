"""Lowering of traced models with skip connections (torch.fx / lowbit.graph) to an :class:`IntProgram`.

The fx graph is walked in order. A Linear/Conv with the BatchNorm and ReLU after it is one
compute block, as in the sequential path; its int32 result becomes an 8-bit tensor
("materialized") where something needs one: the next layer, a pool, an add, or an
edge quantizer (``lowbit_acts.*``, whose scale it then takes; else the consuming layer's
input quantizer, else the calibrated max). A residual add ``a + b`` requantizes both
8-bit inputs to a shared output scale and saturates:
``out = clamp(round_shift(a * ma + b * mb, S), lo, hi)``, ``ma = round(2^S s_a / s_out)``,
``mb = round(2^S s_b / s_out)``, S the largest shift with both in 15 bits; a ReLU after the
add is fused (``lo = 0``). Every op names its inputs (``src``), so a branch's input stays
in the arena until its last reader has run.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, fx, nn

from ...nn.act import ActQuant
from ...nn.layers import QuantLayer
from .lower import (
    _BN, _CONV, _POOLS, _SKIP, INT32_MAX, MAX_MULT, SUPPORTED_LAYERS, AddOp, IntProgram, _ActIn, _act_range, _Block,
    _check_layer, _compute_op, _decode_weights, _pool_op, _unsupported,
)

__all__ = ["lower_graph", "add_multipliers"]

_ADDS = (operator.add, operator.iadd, torch.add)
_RELUS = (torch.relu, torch.nn.functional.relu, torch.relu_)
_FLATTENS = (torch.flatten,)


@dataclass
class _Int:
    """An 8-bit tensor in the program: produced by op ``src`` (-1: the model input) at scale ``act``."""

    src: int
    shape: tuple[int, ...]
    act: _ActIn


@dataclass
class _Pending:
    """A compute block or an add whose int32 result is not yet requantized; ``node``: its last fx node."""

    node: str
    block: _Block | None = None
    inp: _Int | None = None
    add: tuple[_Int, _Int] | None = None
    relu: bool = False
    aq: ActQuant | None = None  # the last edge quantizer on it (its scale is the output's when usable)
    name: str = ""  # the op's name (the add's node, the layer's module)
    done: _Int | None = None  # once 8-bit: every reader shares the one tensor


def add_multipliers(name: str, sa: float, sb: float, s_out: float, amax: int) -> tuple[int, int, int]:
    """(ma, mb, S): the largest S <= 30 with ``ma, mb <= MAX_MULT`` and ``amax * (ma + mb)`` in int32."""
    for s in range(30, -1, -1):
        ma, mb = round(sa / s_out * 2.0**s), round(sb / s_out * 2.0**s)
        if max(ma, mb) <= MAX_MULT and amax * (ma + mb) <= INT32_MAX:
            return int(ma), int(mb), s
    raise ValueError(f"layer {name!r}: the add's input scales are too far from its output scale for int32")  # pragma: no cover


class _Recorder(fx.Interpreter):
    """Runs the graph on the calibration inputs and keeps every node's output."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, object] = {}

    def run_node(self, n: fx.Node) -> object:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def _usable(aq: ActQuant | None) -> ActQuant | None:
    """``aq`` when its scale can be the MCU tensor's: frozen, one scale, zero point 0 (else calibrate)."""
    if aq is None or not aq.q.frozen or aq.q.scale.numel() != 1:
        return None
    zp = aq.q.zero_point
    return aq if not (zp.numel() and bool((zp != 0).any())) else None


def _fn_name(n: fx.Node) -> str:
    return str(getattr(n.target, "__name__", n.target))


@torch.no_grad()
def lower_graph(model: fx.GraphModule, x: Tensor, *, ternary: str = "base3") -> IntProgram:
    """Lower a traced quantized model (converted, eval mode) with residual adds; ``x``: calibration inputs."""
    rec = _Recorder(model)
    rec.run(x)
    vals = rec.values
    mods = dict(model.named_modules())
    prog: IntProgram | None = None
    env: dict[str, object] = {}

    def data(name: str) -> Tensor:
        v = vals[name]
        if not isinstance(v, Tensor):
            raise ValueError(f"node {name!r} does not produce a tensor")
        return v

    def user_layer(node: str) -> str | None:
        """The only user of ``node`` (past Dropout/Identity) when that user is a quantized layer."""
        us = list(nodes[node].users)
        while len(us) == 1 and us[0].op == "call_module" and isinstance(mods.get(str(us[0].target)), (*_SKIP, ActQuant)):
            us = list(us[0].users)
        if len(us) == 1 and us[0].op == "call_module" and isinstance(mods.get(str(us[0].target)), QuantLayer):
            return str(us[0].target)
        return None

    def users_aq(node: str) -> ActQuant | None:
        """The input quantizer of the only user of ``node`` when that user is a quantized layer."""
        layer = user_layer(node)
        return getattr(mods[layer], "input_quant", None) if layer is not None else None

    def materialize(v: object, aq: ActQuant | None = None) -> _Int:
        assert prog is not None
        if isinstance(v, _Int):
            return v
        if not isinstance(v, _Pending):
            raise ValueError(f"the MCU target needs tensors here, got {type(v).__name__}")
        if v.done is not None:
            return v.done
        v.done = _materialize(v, aq)
        return v.done

    def _materialize(v: _Pending, aq: ActQuant | None) -> _Int:
        assert prog is not None
        d = data(v.node)
        aq = _usable(aq) or _usable(v.aq) or _usable(users_aq(v.node))
        out = _act_range(v.node, aq, d, v.relu, None)
        if v.relu:
            out = _ActIn(out.scale, max(out.lo, 0), out.hi)
        if v.block is not None:
            assert v.inp is not None
            b = v.block
            b.relu = v.relu
            w = _decode_weights(b.name, b.mod.encode_weight(), ternary)  # type: ignore[union-attr]
            if w.kind == "pt":
                raise ValueError(f"layer {b.name!r}: 4.6-bit product tables are not supported in models with skip connections")
            cop, _ = _compute_op(b, w, v.inp.act, v.inp.shape, out, False)
            cop.src = (v.inp.src,)
            prog.ops.append(cop)
            return _Int(len(prog.ops) - 1, tuple(cop.out_shape), out)
        assert v.add is not None
        a, b2 = v.add
        ma, mb, s = add_multipliers(v.node, a.act.scale, b2.act.scale, out.scale, max(abs(a.act.lo), abs(a.act.hi), abs(b2.act.lo), abs(b2.act.hi)))
        prog.ops.append(AddOp(v.name, a.shape, ma, mb, s, out.lo, out.hi, a.act.lo < 0, b2.act.lo < 0, (a.src, b2.src)))
        return _Int(len(prog.ops) - 1, a.shape, out)

    def relu(v: object, node: str, what: str) -> _Pending:
        if not isinstance(v, _Pending) or v.relu or v.done is not None:
            raise ValueError(f"node {node!r} ({what}): the MCU target fuses a ReLU only directly after a Linear/Conv (+ BatchNorm) or an add")
        v.relu, v.node, v.aq = True, node, None  # a quantizer before the ReLU does not describe its output
        return v

    nodes = {n.name: n for n in model.graph.nodes}
    result: object = None
    for n in model.graph.nodes:
        args = [env[a.name] if isinstance(a, fx.Node) else a for a in n.args]
        if n.op == "placeholder":
            if prog is not None:
                raise ValueError("the MCU target takes models with one input")
            d = data(n.name)
            # the model input takes its first layer's input quantizer (an error names that layer)
            act = _act_range(user_layer(n.name) or n.name, users_aq(n.name), d, False, None)
            prog = IntProgram(tuple(int(s) for s in d.shape[1:]), act.scale, act.lo, act.hi)
            env[n.name] = _Int(-1, prog.input_shape, act)
        elif n.op == "call_module":
            mod = mods[str(n.target)]
            name = str(n.target)
            if isinstance(mod, ActQuant):  # an edge quantizer: the value takes its scale when it becomes 8-bit
                if isinstance(args[0], _Pending):
                    args[0].aq, args[0].node = mod, n.name
                env[n.name] = args[0]
                continue
            _check_layer(name, mod)
            if isinstance(mod, (nn.Linear, *_CONV)):
                inp = materialize(args[0], getattr(mod, "input_quant", None))
                if isinstance(mod, nn.Linear):
                    inp = _Int(inp.src, (int(math.prod(inp.shape)),), inp.act)
                env[n.name] = _Pending(n.name, block=_Block(name, mod), inp=inp, name=name)
            elif isinstance(mod, _BN):
                v = args[0]
                if not (isinstance(v, _Pending) and v.block is not None and v.block.bn is None and not v.relu):
                    raise _unsupported(name, mod, "a BatchNorm must directly follow a Linear/Conv to be folded")
                v.block.bn, v.node = mod, n.name
                env[n.name] = v
            elif isinstance(mod, nn.ReLU):
                env[n.name] = relu(args[0], n.name, "ReLU")
            elif isinstance(mod, _POOLS):
                inp = materialize(args[0])
                pool = _pool_op(name, mod, inp.shape, inp.act.lo, inp.act.hi)
                pool.src = (inp.src,)
                prog.ops.append(pool)  # type: ignore[union-attr]
                env[n.name] = _Int(len(prog.ops) - 1, pool.out_shape, inp.act)  # type: ignore[union-attr]
            elif isinstance(mod, nn.Flatten):
                inp = materialize(args[0])
                env[n.name] = _Int(inp.src, (int(math.prod(inp.shape)),), inp.act)
            else:  # Dropout, Identity
                env[n.name] = args[0]
        elif n.op in ("call_function", "call_method"):
            fn = n.target
            if (n.op == "call_function" and fn in _ADDS) or (n.op == "call_method" and fn in ("add", "__add__")):
                if len(args) != 2 or n.kwargs or not all(isinstance(a, (_Int, _Pending)) for a in args):
                    raise ValueError(f"node {n.name!r} ({_fn_name(n)}): the MCU target adds two tensors (no constants, no alpha)")
                a, b = materialize(args[0]), materialize(args[1])
                if a.shape != b.shape:
                    raise ValueError(f"node {n.name!r}: an add of shapes {a.shape} and {b.shape} (no broadcasting on the MCU target)")
                env[n.name] = _Pending(n.name, add=(a, b), name=n.name)
            elif (n.op == "call_function" and fn in _RELUS) or (n.op == "call_method" and fn in ("relu", "relu_")):
                env[n.name] = relu(args[0], n.name, _fn_name(n))
            elif (n.op == "call_function" and fn in _FLATTENS) or (n.op == "call_method" and fn in ("flatten", "view", "reshape")):
                d = data(n.name)
                if d.dim() != 2 or d.shape[0] != x.shape[0]:
                    raise ValueError(
                        f"node {n.name!r} ({_fn_name(n)} to {tuple(d.shape)}) is not supported by the MCU target: only flattening "
                        f"to [N, features]; supported: {SUPPORTED_LAYERS}"
                    )
                inp = materialize(args[0])
                env[n.name] = _Int(inp.src, (int(d.shape[1]),), inp.act)
            elif n.op == "call_function" and fn is torch.nn.functional.dropout:
                env[n.name] = args[0]
            else:
                raise ValueError(
                    f"node {n.name!r} (the functional op {_fn_name(n)}) is not supported by the MCU target; supported: {SUPPORTED_LAYERS}"
                )
        elif n.op == "output":
            result = args[0]
        else:
            raise ValueError(f"node {n.name!r} ({n.op} {n.target}) is not supported by the MCU target; supported: {SUPPORTED_LAYERS}")
    assert prog is not None
    if not (isinstance(result, _Pending) and result.block is not None and not result.relu):
        raise ValueError("the model's output must be the logits of a Linear/Conv layer (no ReLU, pool or add after it)")
    b, inp = result.block, result.inp
    assert inp is not None
    w = _decode_weights(b.name, b.mod.encode_weight(), ternary)  # type: ignore[union-attr]
    cop, logit_scale = _compute_op(b, w, inp.act, inp.shape, None, False)
    cop.src = (inp.src,)
    prog.ops.append(cop)
    prog.logit_scale = logit_scale
    if not np.isfinite(logit_scale):  # pragma: no cover
        raise ValueError("the logit scale is not finite")
    return prog
