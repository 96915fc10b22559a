"""Memory report of an exported model: flash (weights, tables, code estimate) and RAM (buffers).

- flash = packed weights + tables (per-layer multipliers and biases, codebook LUTs,
  product tables, the op table) + a code-size estimate for the kernels the model uses
  (typical Cortex-M0+/RV32 ``-Os`` sizes; the real number depends on the compiler);
- RAM = the largest pair of activation buffers (a layer's input and output, both int8)
  + the im2col buffer of one output position and group (conv; depthwise: kh*kw bytes)
  + the int32 output buffer (dynamic shift) + the int32 logits.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .lower import AddOp, ComputeOp, IntProgram, PoolOp

__all__ = ["MemoryReport", "LayerMemory", "memory_report", "parse_bytes", "row_bytes", "arena_layout"]

# Code-size estimates in bytes (Cortex-M0+/RV32, -Os), per piece of the generated source.
_CODE_BASE = 700  # infer loop, layer driver, rounding, clamping
_CODE_KERNEL = 160  # one inner-loop kernel
_CODE_CONV = 320  # im2col gather
_CODE_POOL = 180
_CODE_ADD = 120
_CODE_DYNAMIC = 200
_OP_STRUCT = 100  # sizeof(lb_op) on a 32-bit target: 5 uint8 (+1 padding), 15 int16, 2 int32, 5 pointers, 9 int32


def parse_bytes(text: "str | int") -> int:
    """``16k`` -> 16384, ``2k`` -> 2048, ``1.5k``, ``1m``, ``512`` (bytes; k = 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)[bB]?\s*", str(text))
        if not m:
            raise ValueError(f"a memory budget must look like 16k, 2k, 1.5k, 1m or 512 (bytes), got {text!r}")
        value = int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"a memory budget must be > 0 bytes, got {text!r}")
    return value


def row_bytes(op: ComputeOp) -> int:
    """Bytes of one packed weight row in the C arrays."""
    n = op.n
    if op.kind == "t3":
        return (n + 4) // 5
    bits = {"i8": 8, "p4": 4, "l4": 4, "p2": 2, "p1": 1}.get(op.kind)
    if bits is None:  # product-table codes: 4 bits up to 16 weight levels, else 8
        bits = op.code_bits
    per = 8 // bits
    return (n + per - 1) // per


def _table_bytes(op: ComputeOp) -> int:
    t = 6 * op.cout  # multipliers (int16) and biases (int32)
    if op.lut is not None:
        t += 16
    if op.pt_table is not None:
        t += op.pt_table.size
    return t


def _act_bytes(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


def _graph_layout(program: IntProgram) -> tuple[int, list[tuple[int, int, int]]]:
    """First-fit arena offsets for graph programs: an output lives until its last reader has run."""
    ops = program.ops
    srcs = [tuple(o.src) if o.src is not None else (k - 1,) for k, o in enumerate(ops)]
    last_use = {k: k for k in range(len(ops))}
    for k, ss in enumerate(srcs):
        for j in ss:
            if j >= 0:
                last_use[j] = max(last_use[j], k)
    live: list[tuple[int, int, int]] = []  # (offset, size, producer)
    at: dict[int, int] = {}
    arena = 0
    for k, o in enumerate(ops):
        live = [b for b in live if last_use[b[2]] >= k]  # buffers still to be read (by this op or later)
        size = 0 if getattr(o, "last", False) else _act_bytes(o.out_shape)
        off = 0
        for b0, bs, _ in sorted(live):
            if off + size <= b0:
                break
            off = max(off, b0 + bs)
        at[k] = off
        if size:
            live.append((off, size, k))
            arena = max(arena, off + size)
    places = []
    for k, ss in enumerate(srcs):
        ins = [at[j] if j >= 0 else -1 for j in ss]
        places.append((ins[0], at[k] if not getattr(ops[k], "last", False) else 0, ins[1] if len(ins) > 1 else 0))
    return arena, places


def arena_layout(program: IntProgram) -> tuple[int, list[tuple[int, int, int]]]:
    """Arena size and (in_at, out_at, in2_at) per op: outputs alternate between the arena's two ends (graphs: first fit)."""
    if program.graph:
        return _graph_layout(program)
    ops = program.ops
    sizes = [(_act_bytes(o.in_shape), 0 if getattr(o, "last", False) else _act_bytes(o.out_shape)) for o in ops]
    arena = max([sizes[0][1]] + [i + o for i, o in sizes[1:]])
    places: list[tuple[int, int]] = []
    at_start = True  # where the previous output went
    for k, (_, out) in enumerate(sizes):
        if k == 0:
            places.append((-1, 0, 0))
            at_start = True
            continue
        in_at = 0 if at_start else arena - sizes[k - 1][1]
        out_at = arena - out if at_start else 0
        places.append((in_at, out_at, 0))
        at_start = not at_start
    return arena, places


@dataclass
class LayerMemory:
    """Flash bytes of one layer."""

    name: str
    op: str
    weight_format: str
    kind: str
    weights: int
    tables: int
    bits_per_weight: float


@dataclass
class MemoryReport:
    """Flash and RAM bytes of an exported model, with a check against budgets."""

    layers: list[LayerMemory] = field(default_factory=list)
    weights: int = 0
    tables: int = 0
    code: int = 0
    activations: int = 0  # largest input + output pair
    col: int = 0
    ybuf: int = 0
    logits: int = 0

    @property
    def flash(self) -> int:
        """Flash bytes: weights + tables + code estimate."""
        return self.weights + self.tables + self.code

    @property
    def ram(self) -> int:
        """RAM bytes: largest activation pair + im2col + dynamic int32 buffer + logits."""
        return self.activations + self.col + self.ybuf + self.logits

    def markdown(self) -> str:
        """The report as markdown tables."""
        lines = ["| layer | op | weights | kind | bits/weight | weight bytes | table bytes |", "|---|---|---|---|---|---|---|"]
        for m in self.layers:
            lines.append(f"| {m.name} | {m.op} | {m.weight_format} | {m.kind} | {m.bits_per_weight:.2f} | {m.weights:,} | {m.tables:,} |")
        lines += [
            "",
            "| memory | bytes | made of |",
            "|---|---|---|",
            f"| flash | {self.flash:,} | weights {self.weights:,} + tables {self.tables:,} + code (estimate) {self.code:,} |",
            f"| RAM | {self.ram:,} | activations (largest in+out pair) {self.activations:,} + im2col {self.col:,} "
            f"+ int32 buffer {self.ybuf:,} + logits {self.logits:,} |",
        ]
        return "\n".join(lines)

    def check(self, flash: "str | int | None" = None, ram: "str | int | None" = None) -> None:
        """Raise ValueError naming what does not fit when flash or RAM exceed the budgets."""
        problems = []
        if flash is not None and self.flash > (fb := parse_bytes(flash)):
            problems.append(
                f"flash needs {self.flash:,} B > budget {fb:,} B (weights {self.weights:,}, tables {self.tables:,}, "
                f"code estimate {self.code:,}; largest layer {max(self.layers, key=lambda m: m.weights).name!r} "
                f"{max(m.weights for m in self.layers):,} B)"
            )
        if ram is not None and self.ram > (rb := parse_bytes(ram)):
            problems.append(
                f"RAM needs {self.ram:,} B > budget {rb:,} B (activations {self.activations:,}, im2col {self.col:,}, "
                f"int32 buffer {self.ybuf:,}, logits {self.logits:,})"
            )
        if problems:
            raise ValueError("the model does not fit: " + "; ".join(problems))


def memory_report(program: IntProgram) -> MemoryReport:
    """Flash and RAM bytes of the C code that :func:`lowbit.targets.mcu.export` writes for ``program``."""
    rep = MemoryReport()
    kernels: set[tuple[str, bool, int]] = set()
    for op in program.ops:
        if isinstance(op, (PoolOp, AddOp)):
            continue
        wb = row_bytes(op) * op.cout
        tb = _table_bytes(op)
        rep.layers.append(LayerMemory(op.name, op.op, op.weight_format, op.kind, wb, tb, 8 * wb / max(1, op.codes.size)))
        rep.weights += wb
        rep.tables += tb
        kernels.add((op.kind, op.in_lo < 0, op.pt_stride))
    rep.tables += _OP_STRUCT * len(program.ops)
    has_conv = any(isinstance(o, ComputeOp) and o.op == "conv" for o in program.ops)
    has_pool = any(isinstance(o, PoolOp) for o in program.ops)
    rep.code = (
        _CODE_BASE + _CODE_KERNEL * len(kernels) + (_CODE_CONV if has_conv else 0) + (_CODE_POOL if has_pool else 0)
        + (_CODE_DYNAMIC if program.dynamic else 0) + (_CODE_ADD if any(isinstance(o, AddOp) for o in program.ops) else 0)
    )
    if program.graph:  # the arena: skip connections keep more than one pair alive
        rep.activations = arena_layout(program)[0]
    else:
        pairs = [_act_bytes(o.in_shape) + (0 if getattr(o, "last", False) else _act_bytes(o.out_shape)) for o in program.ops]
        rep.activations = max(pairs)
    rep.col = max([o.n for o in program.compute_ops if o.op == "conv"], default=0)
    if program.dynamic:
        rep.ybuf = 4 * max([o.cout * o.positions for o in program.compute_ops if not o.last], default=0)
    rep.logits = 4 * program.num_outputs
    return rep
