"""C export: a C99 header (packed weights, per-layer constants) and one inference source file.

::

    from lowbit.targets.mcu import export
    res = export(qmodel, "out/", calib=x_train[:512], flash="16k", ram="2k")
    print(res.report.markdown())

The files: ``<name>.h`` (API, sizes, and the data under ``LB_MODEL_DATA``), ``<name>.c``
(kernels instantiated for the weight types the model uses, the op table, the
interpreter loop) and, with ``harness=True``, ``<name>_main.c`` (stdin -> logits on
stdout). Nothing is written when lowering, the overflow checks or the budget fail; the
files are written to temporary names (a temporary folder when ``out_dir`` is new) and
renamed into place.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Iterable

import numpy as np
from torch import Tensor, nn

from ...fileio import FILE_MODE, atomic_dir, atomic_path
from ...packing import pack
from ...signatures import keywords_of
from .lower import AddOp, ComputeOp, IntProgram, PoolOp, lower
from .report import MemoryReport, arena_layout, memory_report, row_bytes

__all__ = ["export", "export_program", "render", "pack_weights", "ExportResult"]

_KERNEL_MACRO = {"i8": "LB_DOT_I8", "p4": "LB_DOT_P4", "p2": "LB_DOT_P2", "p1": "LB_DOT_P1", "t3": "LB_DOT_T3", "l4": "LB_DOT_L4"}
_KIND_TEXT = {
    "i8": "int8 values",
    "p4": "4-bit codes, w = off + step * code",
    "p2": "2-bit codes, w = off + step * code",
    "p1": "1-bit codes, w = off + step * code",
    "t3": "ternary base 3 (5 trits a byte), w = off + step * trit",
    "l4": "4-bit codes into an int8 look-up table",
    "pt": "codes into an int8 product table (4.6-bit pair)",
}


@dataclass
class ExportResult:
    """What :func:`export` produced: the integer program, the memory report and the files written."""

    program: IntProgram
    report: MemoryReport
    files: dict[str, Path] = field(default_factory=dict)


def _template(name: str) -> Template:
    return Template(resources.files("lowbit.targets.mcu").joinpath("templates", name).read_text(encoding="utf-8"))


def _trits(codes: np.ndarray) -> np.ndarray:
    """Rows of codes 0..2 -> bytes ``ceil(v * 256 / 243)``, ``v`` = 5 trits, the first one most significant."""
    cout, n = codes.shape
    padded = np.zeros((cout, (n + 4) // 5 * 5), dtype=np.int64)
    padded[:, :n] = codes
    groups = padded.reshape(cout, -1, 5)
    v = (groups * np.array([81, 27, 9, 3, 1])).sum(axis=2)
    return ((v * 256 + 242) // 243).astype(np.uint8).reshape(cout, -1)


def pack_weights(op: ComputeOp) -> np.ndarray:
    """The packed weight rows of one layer as uint8 [cout, row_bytes] (what the C kernels read)."""
    import torch

    if op.kind == "i8":
        return op.values.astype(np.int8).view(np.uint8)
    if op.kind == "t3":
        return _trits(op.codes)
    bits = {"p4": 4, "l4": 4, "p2": 2, "p1": 1}.get(op.kind, op.code_bits)
    if bits == 8:
        return op.codes.astype(np.uint8)
    per = 8 // bits
    npad = (op.n + per - 1) // per * per
    padded = np.zeros((op.cout, npad), dtype=np.uint8)
    padded[:, : op.n] = op.codes
    packed = pack(torch.from_numpy(padded.reshape(-1)), bits).numpy()
    return packed.reshape(op.cout, row_bytes(op))


def _c_array(ctype: str, name: str, values: np.ndarray, fmt: str = "{}") -> str:
    flat = np.asarray(values).reshape(-1)
    items = [fmt.format(int(v)) for v in flat]
    per_line = 16 if ctype.endswith("8_t") else 8
    body = ",\n".join("    " + ", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line))
    return f"static const {ctype} {name}[{max(1, len(items))}] = {{\n{body if items else '    0'}\n}};"


def _kernel(op: ComputeOp) -> tuple[str, str]:
    """(function name, instantiation line) of the kernel a layer needs."""
    sfx, ctype = ("s8", "int8_t") if op.in_lo < 0 else ("u8", "uint8_t")
    if op.kind == "pt":
        width = "pt4" if op.code_bits == 4 else "pt8"
        name = f"lb_dot_{width}_{sfx}_{op.pt_stride}"
        return name, f"LB_DOT_{width.upper()}({name}, {ctype}, {op.pt_stride})"
    name = f"lb_dot_{op.kind}_{sfx}"
    return name, f"{_KERNEL_MACRO[op.kind]}({name}, {ctype})"


def _fmt_float(v: float) -> str:
    return f"{v:.9g}"


def render(
    program: IntProgram, *, name: str = "lowbit_model", prefix: str = "lowbit", harness: bool = False, target: str | None = None
) -> dict[str, str]:
    """The C files for ``program`` as ``{file name: text}`` (nothing is written); ``target``: see :mod:`.cross`."""
    from .cross import build_line
    from .cross import target as find_target

    tgt = find_target(target) if target is not None else None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"name must be a C identifier (letters, digits, '_'), got {name!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise ValueError(f"prefix must be a C identifier (letters, digits, '_'), got {prefix!r}")
    arena, places = arena_layout(program)
    data: list[str] = []
    kernels: dict[str, str] = {}
    ops: list[str] = []
    summary: list[str] = []
    for i, (op, (in_at, out_at, in2_at)) in enumerate(zip(program.ops, places)):
        if isinstance(op, AddOp):
            c, h, w = (tuple(op.shape) + (1, 1))[:3] if len(op.shape) < 3 else op.shape
            summary.append(f"op {i}: {op.name}: add {op.shape}, out = clamp(round_shift(a * {op.ma} + b * {op.mb}, {op.shift}), {op.lo}, {op.hi})")
            ops.append(
                f"    {{.kind = LB_ADD, .in_signed = {int(op.a_signed)}, .in2_signed = {int(op.b_signed)}, .c = {c}, .h = {h}, .w = {w}, "
                f".groups = 1, .off = {op.ma}, .step = {op.mb}, .shift = {op.shift}, .lo = {op.lo}, .hi = {op.hi}, "
                f".in_at = {in_at}, .in2_at = {in2_at}, .out_at = {out_at}}}, /* {op.name} */"
            )
            continue
        if isinstance(op, PoolOp):
            c, h, w = op.in_shape
            _, oh, ow = op.out_shape
            (kh, kw), (sh, sw) = op.kernel, op.stride
            how = "" if op.kind == "max" else f", out = clamp(round_shift(sum * {op.mult}, {op.shift}), {op.lo}, {op.hi})"
            summary.append(f"op {i}: {op.name}: {op.kind}-pool {kh}x{kw} stride {sh}x{sw} {op.in_shape} -> {op.out_shape}{how}")
            kind = "LB_MAXPOOL" if op.kind == "max" else "LB_AVGPOOL"
            ops.append(
                f"    {{.kind = {kind}, .in_signed = {int(op.signed)}, .c = {c}, .h = {h}, .w = {w}, .oc = {c}, .oh = {oh}, "
                f".ow = {ow}, .kh = {kh}, .kw = {kw}, .sh = {sh}, .sw = {sw}, .groups = 1, .pmult = {op.mult}, "
                f".shift = {op.shift}, .lo = {op.lo}, .hi = {op.hi}, .in_at = {in_at}, .out_at = {out_at}}}, /* {op.name} */"
            )
            continue
        L = f"L{i}"
        fn, inst = _kernel(op)
        kernels[fn] = inst
        shape = f"{op.in_shape} -> {op.out_shape}"
        if op.op == "conv":
            shape += f" ({op.kernel[0]}x{op.kernel[1]}, stride {op.stride[0]}x{op.stride[1]}, pad {op.pads}, groups {op.groups})"
        summary.append(f"op {i}: {op.name}: {op.op} {shape}, weights {op.weight_format} ({op.kind}: {_KIND_TEXT[op.kind]})")
        data.append(
            f"/* op {i}: {op.name}: {op.op} {shape}; weights {op.weight_format} as {_KIND_TEXT[op.kind]};\n"
            f"   y = acc * {L}_M[c] + {L}_B[c]; "
            + ("the int32 logits */" if op.last else f"out = clamp(round_shift(y, {op.shift}), {op.out_lo}, {op.out_hi}) */")
        )
        data += [
            f"#define {L}_N {op.n}",
            f"#define {L}_ROWBYTES {row_bytes(op)}",
            f"#define {L}_OFF {op.off}",
            f"#define {L}_STEP {op.step}",
            f"#define {L}_SHIFT {op.shift}",
            f"#define {L}_LO {op.out_lo if not op.last else 0}",
            f"#define {L}_HI {op.out_hi if not op.last else 0}",
            _c_array("uint8_t", f"{L}_W", pack_weights(op), "0x{:02x}"),
            _c_array("int16_t", f"{L}_M", op.mult),
            _c_array("int32_t", f"{L}_B", op.bias),
        ]
        tab = "0"
        if op.lut is not None:
            data.append(_c_array("int8_t", f"{L}_LUT", op.lut))
            tab = f"{L}_LUT"
        elif op.pt_table is not None:
            data.append(_c_array("int8_t", f"{L}_PT", op.pt_table))
            tab = f"{L}_PT + ({-op.pt_lo} * {op.pt_stride})"  # the row of activation 0
        data.append("")
        if op.op == "conv":
            cin, h, w = op.in_shape
            oc, oh, ow = op.out_shape
            (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = op.kernel, op.stride, op.dilation, op.pads
            dims = (f".c = {cin}, .h = {h}, .w = {w}, .oc = {oc}, .oh = {oh}, .ow = {ow}, .kh = {kh}, .kw = {kw}, "
                    f".sh = {sh}, .sw = {sw}, .dh = {dh}, .dw = {dw}, .pt = {pt}, .pl = {pl}, .groups = {op.groups}")
            kind = "LB_CONV"
        else:
            dims, kind = f".c = {op.n}, .h = 1, .w = 1, .oc = {op.cout}, .oh = 1, .ow = 1, .groups = 1", "LB_DENSE"
        ops.append(
            f"    {{.kind = {kind}, .in_signed = {int(op.in_lo < 0)}, .affine = {int(op.affine)}, .last = {int(op.last)}, {dims}, "
            f".n = {L}_N, .rowbytes = {L}_ROWBYTES, .dot = {fn}, .weights = {L}_W, .tab = {tab}, .mult = {L}_M, .bias = {L}_B, "
            f".off = {L}_OFF, .step = {L}_STEP, .shift = {L}_SHIFT, .lo = {L}_LO, .hi = {L}_HI, .in_at = {in_at}, "
            f".out_at = {out_at if not op.last else 0}}}, /* {op.name} */"
        )
    has_conv = any(isinstance(o, ComputeOp) and o.op == "conv" for o in program.ops)
    has_pool = any(isinstance(o, PoolOp) for o in program.ops)
    has_add = any(isinstance(o, AddOp) for o in program.ops)
    ybuf = max([o.cout * o.positions for o in program.compute_ops if not o.last], default=0) if program.dynamic else 0
    col = max([o.n for o in program.compute_ops if o.op == "conv"], default=0)
    guard = re.sub(r"[^A-Z0-9_]", "_", name.upper()) + "_H"
    header = _template("lowbit_model.h.in").substitute(
        NAME=name,
        PREFIX=prefix,
        GUARD=guard,
        SUMMARY="\n * ".join(summary) + ("\n * Requantization: dynamic (max-based) shifts." if program.dynamic else "\n * Requantization: static shifts."),
        INPUT_SCALE=_fmt_float(program.input_scale),
        LOGIT_SCALE=_fmt_float(program.logit_scale),
        LOGIT_NOTE=" (times 2^D, D the summed dynamic shift differences)" if program.dynamic else "",
        INPUT_SIZE=program.input_size,
        INPUT_SIGNED=int(program.input_lo < 0),
        INPUT_LO=program.input_lo,
        INPUT_HI=program.input_hi,
        NUM_OUTPUTS=program.num_outputs,
        NUM_OPS=len(program.ops),
        ARENA=max(1, arena),
        COL=max(1, col),
        YBUF=max(1, ybuf),
        HAS_CONV=int(has_conv),
        HAS_POOL=int(has_pool),
        HAS_ADD=int(has_add),
        DYNAMIC=int(program.dynamic),
        HEADROOM=program.headroom,
        INPUT_T="int8_t" if program.input_lo < 0 else "uint8_t",
        DATA="\n".join(data),
    )
    source = _template("lowbit_model.c.in").substitute(
        NAME=name, PREFIX=prefix, KERNELS="\n".join(kernels.values()), OPS="\n".join(ops)
    )
    files = {f"{name}.h": header, f"{name}.c": source}
    if harness:
        if tgt is None or tgt.is_host:
            files[f"{name}_main.c"] = _template("lowbit_main.c.in").substitute(NAME=name, PREFIX=prefix)
        else:  # semihosting file I/O: the emulator (or a debug probe) gives the part the host's files
            files[f"{name}_main.c"] = _template("lowbit_semihost.c.in").substitute(NAME=name, PREFIX=prefix, TARGET=tgt.name)
    if tgt is not None:
        files[f"{name}_build.sh"] = build_line(name, tgt.name)
    return files


def _write_atomic(out_dir: Path, files: dict[str, str]) -> dict[str, Path]:
    """Write all files or none: a new folder appears whole (filled under a temporary name);
    into an existing folder (which may hold the user's own files) every file is written
    to a temporary name first and all are renamed only when every one is complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"the parent folder of out_dir does not exist: {parent}")
    if not out_dir.exists():
        with atomic_dir(out_dir) as tmp:
            for fname, text in files.items():
                (tmp / fname).write_text(text, encoding="utf-8")
                os.chmod(tmp / fname, FILE_MODE)
    else:
        with contextlib.ExitStack() as stack:  # an error in any file unwinds (removes) every temporary
            for fname, text in files.items():
                stack.enter_context(atomic_path(out_dir / fname)).write_text(text, encoding="utf-8")
    return {f: out_dir / f for f in files}


def export_program(
    program: IntProgram,
    out_dir: "str | os.PathLike[str]",
    *,
    name: str = "lowbit_model",
    prefix: str = "lowbit",
    harness: bool = False,
    flash: "str | int | None" = None,
    ram: "str | int | None" = None,
    target: str | None = None,
) -> ExportResult:
    """Write the C files for an already lowered :class:`IntProgram` (budgets checked first); ``target`` adds ``<name>_build.sh``."""
    report = memory_report(program)
    report.check(flash, ram)
    files = render(program, name=name, prefix=prefix, harness=harness, target=target)
    return ExportResult(program, report, _write_atomic(Path(out_dir), files))


@keywords_of(export_program)  # one list of the file options, kept in export_program
def export(
    model: nn.Module,
    out_dir: "str | os.PathLike[str]",
    *,
    calib: "Tensor | np.ndarray | Iterable[object] | None" = None,
    shift: str = "static",
    ternary: str = "base3",
    **options: Any,
) -> ExportResult:
    """Export a quantized model (PTQ, QAT or converted) as integer-only C; ``calib``: inputs for the activation ranges.

    The other keywords are :func:`export_program`'s (``name``, ``prefix``, ``harness``, ``flash``,
    ``ram``, ``target``). ``target`` (``host``, ``cortex-m0``, ``cortex-m4``, ``rv32imc``, ``rv32ec``)
    picks the harness (semihosting file I/O on a microcontroller) and writes ``<name>_build.sh``
    with the build line.
    """
    program = lower(model, calib, shift=shift, ternary=ternary)
    return export_program(program, out_dir, **options)
