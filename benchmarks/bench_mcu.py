"""MCU target benchmarks: instructions per weight of the C inner loops (valgrind callgrind), and
(with ``--accuracy``) the accuracy of the integer models per weight type on digits.

    python benchmarks/bench_mcu.py                 # inner loops, -O2 and -Os, markdown table
    python benchmarks/bench_mcu.py --accuracy      # + float / fake-quant / integer accuracy table (trains ~1 min)
    python benchmarks/bench_mcu.py --emulated      # + exact executed instructions per weight on rv32ec/rv32imc/Cortex-M4 (QEMU)
    python benchmarks/bench_mcu.py --only mlperf   # MLPerf Tiny shapes: estimated and linked flash/RAM per weight type
    python benchmarks/bench_mcu.py --only mlperf --models dscnn --target rv32imc --check 50

Instructions per weight = (Ir(R2 reps) - Ir(R1 reps)) / ((R2 - R1) * N): start-up cancels out,
and callgrind counts are the same on every run. The kernels are the ones the export emits
(taken from the C template), called through a function pointer as the generated code does.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

N = 4096  # weights per row
R1, R2 = 2, 12

# (row label, weight type, kernel macro instantiation, activation range)
KERNELS = [
    ("int8 (baseline)", "int8 values", "LB_DOT_I8(k, uint8_t)", 255),
    ("int4", "4-bit codes, off + step*code", "LB_DOT_P4(k, uint8_t)", 255),
    ("ternary base-3", "5 trits a byte", "LB_DOT_T3(k, uint8_t)", 255),
    ("ternary 2-bit", "2-bit codes", "LB_DOT_P2(k, uint8_t)", 255),
    ("int2 / 2bitsym", "2-bit codes", "LB_DOT_P2(k, uint8_t)", 255),
    ("binary", "1-bit codes", "LB_DOT_P1(k, uint8_t)", 255),
    ("nf4 / pot4 (LUT)", "4-bit codes, int8 LUT", "LB_DOT_L4(k, uint8_t)", 255),
    ("4.6-bit (63, 9)", "4-bit codes, product table", "LB_DOT_PT4(k, uint8_t, 16)", 31),
    ("4.6-bit (31, 17)", "8-bit codes, product table", "LB_DOT_PT8(k, uint8_t, 32)", 15),
]

_MAIN = r"""
#include <stdint.h>
#include <stdlib.h>
%(MACROS)s
%(KERNEL)s
static uint8_t x[%(N)d], w[%(N)d];
static int8_t table[256 * 32];
int main(int argc, char **argv) {
    int32_t (*volatile fn)(const uint8_t *, const uint8_t *, int32_t, const int8_t *) = k;
    const uint8_t *volatile xp = x;
    volatile int32_t sink = 0;
    uint32_t s = 12345u;
    int r, reps = argc > 1 ? atoi(argv[1]) : 1, i;
    for (i = 0; i < %(N)d; ++i) {
        s = s * 1103515245u + 12345u; x[i] = (uint8_t)((s >> 16) %% (%(AMAX)d + 1));
        s = s * 1103515245u + 12345u; w[i] = (uint8_t)(s >> 16) %(WMASK)s;
    }
    for (i = 0; i < 256 * 32; ++i) table[i] = (int8_t)(i %% 17 - 8);
    for (r = 0; r < reps; ++r) sink += fn(xp, w, %(N)d, table);
    return (int)(sink & 1);
}
"""


def _macros() -> str:
    text = resources.files("lowbit.targets.mcu").joinpath("templates", "lowbit_model.c.in").read_text()
    start = text.index("/* ---- inner loops")
    end = text.index("${KERNELS}")  # includes the no-multiplier variants (chosen by the compiler macros)
    return text[start:end]


def _ir(exe: Path, reps: int) -> int:
    res = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(exe), str(reps)],
        capture_output=True, text=True, check=True,
    )
    m = re.search(r"Collected : (\d+)", res.stderr)
    if not m:
        raise RuntimeError(f"no callgrind count in:\n{res.stderr}")
    return int(m.group(1))


def instructions_per_weight(opt: str, cc: str = "cc") -> list[tuple[str, str, float]]:
    """(label, weight type, instructions per weight) of each kernel compiled with ``opt``."""
    rows = []
    macros = _macros()
    with tempfile.TemporaryDirectory() as d:
        for label, wtype, inst, amax in KERNELS:
            wmask = "& 0x0Fu" if "PT4" in inst else ("% 17u" if "PT8" in inst else "")
            src = _MAIN
            for key, val in (("MACROS", macros), ("KERNEL", inst), ("N", str(N)), ("AMAX", str(amax)), ("WMASK", wmask)):
                src = src.replace(f"%({key})s", val).replace(f"%({key})d", val)
            src = src.replace("%%", "%")
            c = Path(d) / "bench.c"
            exe = Path(d) / "bench"
            c.write_text(src)
            subprocess.run([cc, "-std=c99", opt, "-o", str(exe), str(c)], check=True)
            per = (_ir(exe, R2) - _ir(exe, R1)) / ((R2 - R1) * N)
            rows.append((label, wtype, per))
    return rows


_EMU_MAIN = r"""
#include <stdint.h>
%(MACROS)s
%(KERNEL)s
static uint8_t x[%(N)d + 1], w[%(N)d + 1];
static int8_t table[256 * 32];
volatile int32_t lb_sink;
int main(void) {
    int32_t (*volatile fn)(const uint8_t *, const uint8_t *, int32_t, const int8_t *) = k;
    uint32_t s = 12345u;
    int i;
    for (i = 0; i < %(N)d; ++i) {  /* xorshift: no multiply, so nothing outside the kernel calls __mulsi3 */
        s ^= s << 13; s ^= s >> 17; s ^= s << 5; x[i] = (uint8_t)((s >> 8) %% (%(AMAX)d + 1));
        s ^= s << 13; s ^= s >> 17; s ^= s << 5; w[i] = (uint8_t)(s >> 8) %(WMASK)s;
    }
    for (i = 0; i < 256 * 32; ++i) table[i] = (int8_t)(i %% 17 - 8);
    lb_sink = fn(x, w, %(N)d, table);
    return 0;
}
"""

# ISA -> (compiler, flags, QEMU command); rv32ec is a CH32V003-class core: RV32E, no multiplier
EMU_ISAS = {
    "rv32ec": ("riscv64-unknown-elf-gcc", ["-march=rv32ec", "-mabi=ilp32e"],
               ["qemu-system-riscv32", "-cpu", "rv32,i=false,e=true,m=false,a=false,f=false,d=false,h=false", "-M", "virt", "-bios", "none"]),
    "rv32imc": ("riscv64-unknown-elf-gcc", ["-march=rv32imc", "-mabi=ilp32"], ["qemu-system-riscv32", "-M", "virt", "-bios", "none"]),
    "cortex-m4": ("arm-none-eabi-gcc", ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"], ["qemu-system-arm", "-M", "mps2-an386"]),
}
EMU_N = 1024  # weights in the counted call; a second build with 0 weights gives the call's fixed cost


def _functions(nm: str, elf: Path) -> dict[str, tuple[int, int]]:
    out = subprocess.run([nm, "-S", str(elf)], capture_output=True, text=True, check=True).stdout
    funcs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            funcs[parts[3]] = (int(parts[0], 16) & ~1, int(parts[1], 16))
    return funcs


def _count_call(isa: str, src: str, d: Path, n: int) -> tuple[int, set[str]]:
    """Instructions executed from the kernel's entry until it returns (helpers it calls, __mulsi3 or memset, included),
    and the names of the helpers that ran."""
    cc, flags, qemu = EMU_ISAS[isa]
    c, elf, log = d / f"b{n}.c", d / f"b{n}.elf", d / f"b{n}.log"
    c.write_text(src.replace("%(N)d", str(n)))
    ram = "0x20000000" if "arm" in cc else "0x80400000"
    flash = "0x0" if "arm" in cc else "0x80000000"
    subprocess.run([cc, *flags, "-O2", "--specs=picolibc.specs", "--oslib=semihost", "--crt0=semihost",
                    f"-Wl,--defsym=__flash={flash}", "-Wl,--defsym=__flash_size=0x400000", f"-Wl,--defsym=__ram={ram}",
                    "-Wl,--defsym=__ram_size=0x400000", "-o", str(elf), str(c)], check=True)
    funcs = _functions(cc.replace("gcc", "nm"), elf)
    kstart, ksize = funcs["k"]
    inside = [(a, a + sz, name) for name, (a, sz) in funcs.items() if name in ("k", "memset") or name.startswith("__")]
    helpers: set[str] = set()
    # one instruction a translation block (-singlestep), every block logged (nochain): the exact executed stream
    subprocess.run([*qemu, "-nographic", "-semihosting-config", "enable=on,target=native", "-singlestep", "-d", "exec,nochain",
                    "-D", str(log), "-kernel", str(elf)], check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    count, started = 0, False
    with open(log) as fh:
        for line in fh:
            m = re.search(r"\[[0-9a-f]+/([0-9a-f]+)/", line)
            if not m:
                continue
            pc = int(m.group(1), 16)
            if not started:
                started = pc == kstart
            if started:
                hit = next((name for lo, hi, name in inside if lo <= pc < hi), None)
                if hit is None:
                    break
                count += 1
                if hit != "k":
                    helpers.add(hit)
    log.unlink()
    if not started:
        raise RuntimeError(f"{isa}: the kernel never ran")
    return count, helpers


def emulated_instructions_per_weight(isa: str) -> list[tuple[str, str, float, set[str]]]:
    """(label, weight type, executed instructions per weight, helpers called) of each kernel on ``isa`` in QEMU, exact counts."""
    rows = []
    macros = _macros()
    with tempfile.TemporaryDirectory() as d:
        for label, wtype, inst, amax in KERNELS:
            wmask = "& 0x0Fu" if "PT4" in inst else ("% 17u" if "PT8" in inst else "")
            src = _EMU_MAIN
            for key, val in (("MACROS", macros), ("KERNEL", inst), ("AMAX", str(amax)), ("WMASK", wmask)):
                src = src.replace(f"%({key})s", val).replace(f"%({key})d", val)
            src = src.replace("%%", "%")
            (full, helpers), (empty, _) = _count_call(isa, src, Path(d), EMU_N), _count_call(isa, src, Path(d), 0)
            rows.append((label, wtype, (full - empty) / EMU_N, helpers - {"memset"}))
    return rows


def accuracy_table(seed: int = 0) -> str:
    """Float / fake-quant / integer test accuracy per weight type on digits (MLP), C checked against the reference."""
    import copy

    import numpy as np
    import torch

    import lowbit
    from lowbit.data.images import load_digits, loader
    from lowbit.models import build_model
    from lowbit.targets.mcu import export, reference
    from lowbit.targets.mcu.toolchain import compile_harness, run_harness
    from lowbit.train import evaluate, fit

    torch.set_num_threads(2)
    ds = load_digits(seed=0)
    model = build_model("mlp", ds.input_shape, ds.num_classes, seed=seed)
    fit(model, loader(ds.train, 64, shuffle=True, seed=seed), epochs=15, lr=3e-3, progress=False)
    model.eval()
    float_acc = evaluate(model, loader(ds.test, 512))
    x_te, y_te = ds.test.tensors
    x_all = torch.cat([x_te, ds.train.tensors[0]])
    types = [
        ("int8", "w8,a8", "base3"), ("int4", "w4,a8", "base3"), ("int2", "w2,a8", "base3"),
        ("binary (1 bit)", "*=binary:channel,a8", "base3"), ("ternary, base-3", "*=ternary:channel,a8", "base3"),
        ("ternary, 2-bit", "*=ternary:channel,a8", "2bit"), ("nf4 (LUT)", "*=nf4:channel,a8", "base3"),
        ("pot4 (LUT)", "*=pot4:channel,a8", "base3"), ("4.6-bit (31, 17)", "*=sym17:channel,a:*=sym31:p99.99", "base3"),
        ("4.6-bit (63, 9)", "*=sym9:channel,a:*=sym63:p99.99", "base3"),
        ("int4, weights only (acts calibrated at export)", "w4", "base3"),
    ]
    lines = [
        f"float MLP (64-128-64-10), digits test accuracy {float_acc:.2f} %; PTQ, 1,797 inputs checked C == reference",
        "",
        "| weights | fake-quant % | integer static % | integer dynamic % | C == reference | flash B | RAM B |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, cfg, tern in types:
        q = lowbit.quantize(copy.deepcopy(model), cfg, calib=loader(ds.train, 256))
        fq = evaluate(lowbit.convert(q), loader(ds.test, 512))
        accs, same = [], True
        for shift in ("static", "dynamic"):
            with tempfile.TemporaryDirectory() as d:
                res = export(q, Path(d) / "c", calib=ds.train.tensors[0][:512], shift=shift, ternary=tern, harness=True)
                exe = compile_harness(Path(d) / "c")
                xi = res.program.quantize_input(x_all)
                same &= bool(np.array_equal(run_harness(exe, res.program, xi), reference.run(res.program, xi)))
                accs.append(reference.accuracy(res.program, x_te, y_te))
                if shift == "static":
                    rep = res.report
        lines.append(f"| {label} | {fq:.2f} | {accs[0]:.2f} | {accs[1]:.2f} | {'yes' if same else 'NO'} | {rep.flash:,} | {rep.ram:,} |")
    return "\n".join(lines)


# MLPerf Tiny shapes (random weights, synthetic inputs): model -> (zoo factory, input shape, outputs, signed input,
# {weight type: quantize config}). Signed inputs (MFCC, mel energies) take an int8 first-layer input quantizer.
MLPERF = {
    "dscnn": ("DSCNN", (1, 49, 10), 12, True, {
        "int8": "w8,a8,a:stem=int8", "int4": "w4,a8,a:stem=int8",
        "mixed 8/4/2": "w4,stem=int8:channel,blocks.*.3=int2:channel,a8,a:stem=int8",
    }),
    "resnet8": ("ResNet8", (3, 32, 32), 10, False, {"int8": "w8,a8", "int4": "w4,a8"}),
    "mobilenetv1": ("MobileNetV1", (3, 96, 96), 2, False, {"int8": "w8,a8", "int4": "w4,a8"}),
    "autoencoder": ("FCAutoencoder", (640,), 640, True, {"int8": "w8,a8,a:layers.0=int8", "int4": "w4,a8,a:layers.0=int8"}),
}


def mlperf_table(models: list[str], tgt: str, check: int, seed: int = 0) -> str:
    """Flash/RAM of the MLPerf Tiny shapes: the estimate, the model's linked sections and the whole image on ``tgt``."""
    import copy

    import numpy as np

    import lowbit
    from _mcu_common import warm_zoo  # benchmarks/ is on sys.path when a script runs
    from lowbit.targets.mcu import export_program, lower, reference
    from lowbit.targets.mcu.cross import build_target, linked_size, missing_tools, model_size, run_target

    miss = missing_tools(tgt)
    last = f" C == reference ({check} inputs, {tgt}) |" if check else ""
    rows = [
        f"| model | weights | params | flash estimate | flash linked (model) | RAM estimate | RAM linked (model) | "
        f"whole image flash / RAM+stack ({tgt}) |" + last,
        "|---|---|---|---|---|---|---|---|" + ("---|" if check else ""),
    ]
    for name in models:
        factory, shape, outputs, signed, configs = MLPERF[name]
        model, x = warm_zoo(factory, shape, outputs, signed, max(check, 64), seed)
        params = sum(p.numel() for p in model.parameters())
        for wtype, config in configs.items():
            q = lowbit.quantize(copy.deepcopy(model), config, calib=[(x, None)])
            prog = lower(q, x)
            with tempfile.TemporaryDirectory() as tmp:
                res = export_program(prog, tmp, harness=True, target=tgt)
                if miss:
                    linked, image, same = "-", f"not built: {', '.join(miss)} missing", "-"
                else:
                    elf = build_target(tmp, tgt)
                    m, img = model_size(Path(tmp) / "lowbit_model.map"), linked_size(elf, tgt)
                    linked = (f"{m.flash:,}", f"{m.ram:,}")
                    image = f"{img.flash:,} / {img.ram + img.stack:,}"
                    same = "-"
                    if check:
                        xi = prog.quantize_input(x[:check])
                        same = "yes" if np.array_equal(run_target(elf, tgt, prog, xi, timeout=1800), reference.run(prog, xi)) else "**NO**"
            lf, lr = linked if isinstance(linked, tuple) else (linked, linked)
            rows.append(f"| {name} | {wtype} | {params:,} | {res.report.flash:,} | {lf} | {res.report.ram:,} | {lr} | {image} |"
                        + (f" {same} |" if check else ""))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Print the markdown tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accuracy", action="store_true", help="also train a float MLP and print the accuracy table")
    p.add_argument("--cc", default="cc")
    p.add_argument("--emulated", action="store_true",
                   help="also count executed instructions per weight on rv32ec, rv32imc and Cortex-M4 in QEMU (-singlestep -d exec; ~3 min)")
    p.add_argument("--only", choices=("loops", "mlperf"), default="loops",
                   help="loops: the inner-loop tables (default); mlperf: the MLPerf Tiny shapes' flash/RAM table")
    p.add_argument("--models", default=",".join(MLPERF), help=f"comma-separated, of {', '.join(MLPERF)} (--only mlperf)")
    p.add_argument("--target", default="rv32imc", help="the target the MLPerf models are linked (and run) for")
    p.add_argument("--check", type=int, default=0, help="also run this many inputs in QEMU and compare with the reference")
    args = p.parse_args(argv)
    if args.only == "mlperf":
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in models if m not in MLPERF]
        if bad or not models:
            p.error(f"--models must name some of {', '.join(MLPERF)}, got {args.models!r}")
        if args.check < 0:
            p.error(f"--check must be >= 0, got {args.check}")
        t = time.time()
        print(f"MLPerf Tiny shapes, random weights, synthetic inputs; bytes; linked = the model's object file in the map "
              f"({args.target}, -O2, picolibc); RAM without the stack and the caller's input/logits\n")
        print(mlperf_table(models, args.target, args.check))
        print(f"\n(aim: DS-CNN int4 fits a 64 KB flash / 20 KB RAM part; {time.time() - t:.0f} s)")
        return 0
    t = time.time()
    o2 = instructions_per_weight("-O2", args.cc)
    os_ = instructions_per_weight("-Os", args.cc)
    cc_version = subprocess.run([args.cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"Inner loops, host x86-64, {cc_version}, valgrind callgrind, {N} weights a row\n")
    print("| kernel | storage | instr/weight -O2 | instr/weight -Os |")
    print("|---|---|---|---|")
    for (label, wtype, a), (_, _, b) in zip(o2, os_):
        print(f"| {label} | {wtype} | {a:.2f} | {b:.2f} |")
    print(f"\n(BitNetMCU on RV32: 8 instr/weight for the mul-based 4-bit loop, 17 for the shift-add one; {time.time() - t:.0f} s)")
    if args.emulated:
        print("\nExecuted instructions per weight in QEMU 7.2 (-singlestep -d exec,nochain: every instruction from the kernel's entry "
              f"to its return, helpers such as __mulsi3 included), {EMU_N} weights minus a 0-weight call, gcc 12 -O2, picolibc\n")
        tables = {isa: emulated_instructions_per_weight(isa) for isa in EMU_ISAS}
        head = " | ".join(f"{isa} ({' '.join(EMU_ISAS[isa][1])})" for isa in EMU_ISAS)
        print(f"| kernel | storage | {head} |")
        print("|---|---|" + "---|" * len(EMU_ISAS))
        for i, (label, wtype, *_) in enumerate(KERNELS):
            cells = [f"{tables[isa][i][2]:.2f}" + (f" ({', '.join(sorted(tables[isa][i][3]))})" if tables[isa][i][3] else "")
                     for isa in EMU_ISAS]
            print(f"| {label} | {wtype} | " + " | ".join(cells) + " |")
        print("\n(aims: <= 6 for 4-bit on rv32imc, <= 12 on rv32ec, <= 5 for binary/ternary. Binary branches on each bit: "
              "its count depends on the data, here random bits (half set). A helper named in a cell (__mulsi3) ran inside the loop.)")
    if args.accuracy:
        print()
        print(accuracy_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
