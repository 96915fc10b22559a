"""The C inner loops (LB_DOT_* in the model template) against NumPy on random rows of every length
class (tails included), for uint8 and int8 inputs, on the host and on each emulated ISA (the
multiply-free rv32ec variants are other code); and rv32ec kernels never call ``__mulsi3``
(the 4.6-bit product tables included: their row index is a shift).

One harness a target: every kernel instantiated, its dot products printed over semihosting.
"""
from __future__ import annotations

import os
import re
import subprocess
from importlib import resources

import numpy as np
import pytest

from lowbit.targets.mcu.cross import _link_flags, missing_tools, target
from lowbit.targets.mcu.export import _trits
from lowbit.targets.mcu.toolchain import find_cc

LENGTHS = (1, 2, 3, 4, 5, 7, 8, 9, 11, 13, 16, 17, 23, 31, 40, 64, 131)
# kernel -> (code range, bits a code in the packed row; 0: int8 values, 3: base-3 bytes)
KINDS = {"i8": (256, 8), "p4": (16, 4), "p2": (4, 2), "p1": (2, 1), "t3": (3, 3), "l4": (16, 4), "tern2": (3, 2),
         "pt4": (16, 4), "pt8": (17, 8)}
MACRO = {"i8": "LB_DOT_I8", "p4": "LB_DOT_P4", "p2": "LB_DOT_P2", "p1": "LB_DOT_P1", "t3": "LB_DOT_T3", "l4": "LB_DOT_L4", "tern2": "LB_DOT_P2",
         "pt4": "LB_DOT_PT4", "pt8": "LB_DOT_PT8"}
# product tables (4.6-bit pairs): row stride, input half-range; the kernel gets the row of input 0 (mid-table)
PT = {"pt4": (16, 32), "pt8": (32, 16)}
PT_TABLE = (np.arange(256 * 32) * 7 % 23 - 11).astype(np.int64)
LUT = np.array([-128, -91, -69, -52, -37, -24, -12, 0, 10, 21, 32, 44, 58, 74, 95, 127], dtype=np.int64)


def _loops() -> str:
    text = resources.files("lowbit.targets.mcu").joinpath("templates", "lowbit_model.c.in").read_text()
    return text[text.index("/* ---- inner loops") : text.index("${KERNELS}")]


def _pack(kind: str, codes: np.ndarray) -> np.ndarray:
    """One row of codes as the exporter packs it (low bits first), bytes."""
    bits = KINDS[kind][1]
    if kind == "i8":
        return (codes - 128).astype(np.int8).view(np.uint8)
    if kind == "pt8":
        return codes.astype(np.uint8)
    if kind == "t3":
        return _trits(codes[None, :])[0]
    per = 8 // bits
    padded = np.zeros((len(codes) + per - 1) // per * per, dtype=np.int64)
    padded[: len(codes)] = codes
    return (padded.reshape(-1, per) << (np.arange(per) * bits)).sum(axis=1).astype(np.uint8)


def _expected(kind: str, codes: np.ndarray, x: np.ndarray) -> int:
    if kind in PT:
        return int(PT_TABLE[(x.astype(np.int64) + 128) * PT[kind][0] + codes].sum())
    w = codes - 128 if kind == "i8" else (LUT[codes] if kind == "l4" else codes)
    return int((x.astype(np.int64) * w).sum())


@pytest.fixture(scope="module")
def cases():
    """(kind, signed, n, x, packed, expected) for every kernel, input sign and length."""
    rng = np.random.default_rng(7)
    out = []
    for kind, (levels, _) in KINDS.items():
        for signed in (False, True):
            for n in LENGTHS:
                codes = rng.integers(0, levels, n)
                lo, hi = (-128, 128) if signed else (0, 256)
                if kind in PT:
                    lo, hi = (-PT[kind][1], PT[kind][1]) if signed else (0, PT[kind][1])
                x = rng.integers(lo, hi, n)
                if n == 131:  # extremes: the largest codes times the largest inputs
                    codes[:8], x[:8] = levels - 1, (lo if signed else hi - 1)
                out.append((kind, signed, n, x, _pack(kind, codes), _expected(kind, codes, x)))
    return out


def _source(cases) -> str:
    lines = ["#include <stdint.h>", "#include <stdio.h>", _loops()]
    fns = []
    for kind in KINDS:
        for signed in (False, True):
            name = f"k_{kind}_{'s8' if signed else 'u8'}"
            stride = f", {PT[kind][0]}" if kind in PT else ""
            lines.append(f"{MACRO[kind]}({name}, {'int8_t' if signed else 'uint8_t'}{stride})")
            fns.append(name)
    lines.append("static const int8_t lut[16] = {" + ", ".join(str(v) for v in LUT) + "};")
    lines.append("static const int8_t pt[256 * 32] = {" + ", ".join(str(v) for v in PT_TABLE) + "};")
    calls = []
    for i, (kind, signed, n, x, packed, _) in enumerate(cases):
        lines.append(f"static const {'int8_t' if signed else 'uint8_t'} x{i}[] = {{{', '.join(str(v) for v in x)}}};")
        lines.append(f"static const uint8_t w{i}[] = {{{', '.join(str(v) for v in packed)}}};")
        tab = "pt + 128 * " + str(PT[kind][0]) if kind in PT else "lut"
        calls.append(f"    printf(\"%ld\\n\", (long)call(k_{kind}_{'s8' if signed else 'u8'}, (const uint8_t *)x{i}, w{i}, {n}, {tab}));")
    lines += [
        "typedef int32_t (*dot_fn)(const uint8_t *, const uint8_t *, int32_t, const int8_t *);",
        # through a volatile pointer: every kernel stays a function of its own (the disassembly test reads them)
        "static int32_t call(dot_fn f, const uint8_t *x, const uint8_t *w, int32_t n, const int8_t *t) { dot_fn volatile g = f; return g(x, w, n, t); }",
        "int main(void) {", *calls, "    return 0;", "}",
    ]
    return "\n".join(lines) + "\n"


def _need(tgt: str) -> None:
    miss = missing_tools(tgt)
    if miss:
        msg = f"target {tgt} needs {', '.join(miss)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI must have them (.ci/run installs them)")
        pytest.skip(msg)


def _build(tmp_path, tgt: str, src: str):
    c = tmp_path / "loops.c"
    c.write_text(src)
    if tgt == "host":
        exe = tmp_path / "loops"
        subprocess.run([find_cc() or "cc", "-std=c99", "-O2", "-Wall", "-Werror", "-o", str(exe), str(c)], check=True, cwd=tmp_path)
        return exe, [str(exe)]
    t = target(tgt)
    elf = tmp_path / "loops.elf"
    flags = [f for f in _link_flags(t, "loops") if not f.startswith("-Wl,-Map")]
    subprocess.run([t.cc, *t.arch, "-std=c99", "-O2", "-Wall", "-Werror", *flags, "-o", str(elf), str(c)], check=True, cwd=tmp_path)
    return elf, [*t.qemu, "-kernel", str(elf)]


@pytest.mark.parametrize("tgt", ["host", "rv32imc", "rv32ec", "cortex-m4", "cortex-m0"])
def test_inner_loops_equal_numpy_bit_for_bit(tmp_path, cases, tgt):
    _need(tgt)
    _, cmd = _build(tmp_path, tgt, _source(cases))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)
    # QEMU's semihosting console writes to stderr; the host harness to stdout
    got = [int(v) for v in re.findall(r"^-?\d+$", res.stdout + res.stderr, flags=re.M)]
    assert res.returncode == 0 and len(got) == len(cases), res.stderr[-2000:]
    bad = [(k, s, n, g, e) for (k, s, n, _, _, e), g in zip(cases, got) if g != e]
    assert not bad, f"{tgt}: (kind, signed, n, C, NumPy) {bad[:5]}"
    assert len({e for *_, e in cases}) > len(cases) // 2  # the rows differ: real sums, not zeros


def test_rv32ec_kernels_call_no_multiply(tmp_path, cases):
    _need("rv32ec")
    elf, _ = _build(tmp_path, "rv32ec", _source(cases))
    dis = subprocess.run(["riscv64-unknown-elf-objdump", "-d", str(elf)], capture_output=True, text=True, check=True).stdout
    bodies = dict(re.findall(r"<(k_\w+)>:\n(.*?)(?:\n\n|\Z)", dis, flags=re.S))
    assert len(bodies) == 2 * len(KINDS), sorted(bodies)
    calls = {k: sorted(set(re.findall(r"<(__\w+)>", body))) for k, body in bodies.items()}
    assert all("__mulsi3" not in c and "__muldi3" not in c for c in calls.values()), calls
    assert all("\tmul" not in body for body in bodies.values())
