"""Real microcontroller targets: cross-compile the exported C and run it in QEMU with semihosting.

::

    res = export(model, "out/", calib=x, harness=True, target="rv32imc")
    elf = build_target("out/", "rv32imc")               # riscv64-unknown-elf-gcc + picolibc
    logits = run_target(elf, "rv32imc", res.program, xi)  # qemu-system-riscv32 -M virt -semihosting
    sizes = linked_size(elf, "rv32imc")                 # flash / RAM of the linked image

Targets: ``host`` (the system C compiler, stdin/stdout), ``cortex-m0`` and ``cortex-m4``
(arm-none-eabi-gcc + picolibc, QEMU's MPS2 boards), ``rv32imc`` and ``rv32ec``
(riscv64-unknown-elf-gcc + picolibc, QEMU's ``virt`` board). Debian's picolibc has no rv32e
multilib and QEMU 7.2 cannot run RV32E, so ``rv32ec`` builds for ``rv32ic``/``ilp32``: the same
instructions without a multiplier (what matters for the kernels), with 32 registers instead of 16.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .lower import IntProgram

__all__ = [
    "Target", "TARGETS", "target", "missing_tools", "build_line", "build_target", "run_target", "linked_size", "model_size", "LinkedSize",
]


@dataclass(frozen=True)
class Target:
    """One compile target: compiler, flags, the emulator that runs it and the linker's memory map."""

    name: str
    cc: str
    arch: tuple[str, ...]
    qemu: tuple[str, ...]  # empty for the host
    size: str
    flash: tuple[int, int]  # (origin, length) given to picolibc.ld
    ram: tuple[int, int]
    isa: str  # what the binary really is (rv32ec builds rv32ic: see the module docstring)

    @property
    def is_host(self) -> bool:
        """True for the host compiler (no emulator, stdin/stdout harness)."""
        return self.name == "host"


_ARM_MAP = ((0x0000_0000, 0x40_0000), (0x2000_0000, 0x40_0000))  # MPS2: 4 MB SSRAM1 (code) + 4 MB SSRAM2/3
_RV_MAP = ((0x8000_0000, 0x40_0000), (0x8040_0000, 0x40_0000))  # virt: DRAM at 0x80000000
_ARM_QEMU = ("-nographic", "-semihosting-config", "enable=on,target=native")
_RV_QEMU = ("-M", "virt", "-bios", "none", "-nographic", "-semihosting-config", "enable=on,target=native")

TARGETS: dict[str, Target] = {
    "host": Target("host", "cc", (), (), "size", (0, 0), (0, 0), "host"),
    # Cortex-M0 code (ARMv6-M) is a subset of ARMv7-M: QEMU runs it on the AN385's Cortex-M3
    "cortex-m0": Target("cortex-m0", "arm-none-eabi-gcc", ("-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"),
                        ("qemu-system-arm", "-M", "mps2-an385", "-cpu", "cortex-m3", *_ARM_QEMU), "arm-none-eabi-size",
                        *_ARM_MAP, "armv6-m (run on a Cortex-M3)"),
    "cortex-m4": Target("cortex-m4", "arm-none-eabi-gcc", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"),
                        ("qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", *_ARM_QEMU), "arm-none-eabi-size",
                        *_ARM_MAP, "armv7e-m"),
    "rv32imc": Target("rv32imc", "riscv64-unknown-elf-gcc", ("-march=rv32imc", "-mabi=ilp32"),
                      ("qemu-system-riscv32", *_RV_QEMU), "riscv64-unknown-elf-size", *_RV_MAP, "rv32imc"),
    # picolibc's rv32e/ilp32e multilib; QEMU 7.2 runs RV32E as "rv32,i=false,e=true"
    "rv32ec": Target("rv32ec", "riscv64-unknown-elf-gcc", ("-march=rv32ec", "-mabi=ilp32e"),
                     ("qemu-system-riscv32", "-cpu", "rv32,i=false,e=true,m=false,a=false,f=false,d=false,h=false", *_RV_QEMU),
                     "riscv64-unknown-elf-size", *_RV_MAP, "rv32ec"),
}
TARGET_NAMES = tuple(TARGETS)
_OPT = "-O2"
_WARN = ("-std=c99", "-Wall", "-Wextra", "-Werror")


def target(name: str) -> Target:
    """The :class:`Target` called ``name`` (ValueError naming the choices otherwise)."""
    if name not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {name!r}")
    return TARGETS[name]


def missing_tools(name: str) -> list[str]:
    """The programs (compiler, picolibc, emulator, size) that target ``name`` needs and this machine lacks."""
    t = target(name)
    if t.is_host:
        from .toolchain import find_cc

        return [] if find_cc() else ["cc"]
    need = [t.cc, t.qemu[0], t.size]
    miss = [p for p in need if shutil.which(p) is None]
    if t.cc not in miss and not _picolibc(t):
        miss.append(f"picolibc for {t.cc}")
    return miss


def _picolibc(t: Target) -> bool:
    res = subprocess.run([t.cc, "-print-file-name=picolibc.specs"], capture_output=True, text=True)
    return res.returncode == 0 and os.path.isabs(res.stdout.strip())


def _link_flags(t: Target, name: str) -> list[str]:
    (fo, fl), (ro, rl) = t.flash, t.ram
    return [
        "--specs=picolibc.specs", "--oslib=semihost", "--crt0=semihost", "-DPICOLIBC_INTEGER_PRINTF_SCANF",
        f"-Wl,--defsym=__flash={fo:#x}", f"-Wl,--defsym=__flash_size={fl:#x}",
        f"-Wl,--defsym=__ram={ro:#x}", f"-Wl,--defsym=__ram_size={rl:#x}", "-Wl,--defsym=__stack_size=0x4000",
        f"-Wl,-Map={name}.map", "-Wl,--gc-sections", "-ffunction-sections", "-fdata-sections",
    ]


def build_command(name: str, tgt: str, *, opt: str = _OPT, extra: Sequence[str] = ()) -> list[str]:
    """The compile-and-link command (run in the export folder) that builds ``<name>.elf`` for ``tgt``."""
    t = target(tgt)
    srcs = [f"{name}.c", f"{name}_main.c"]
    if t.is_host:
        from .toolchain import STRICT_FLAGS

        return [t.cc, *STRICT_FLAGS, opt, *extra, "-o", f"{name}_harness", *srcs]
    # the model is its own object file, so the map file tells its flash and RAM apart from libc's
    flags = [*t.arch, *_WARN, opt, *extra, *_link_flags(t, name)]
    return [t.cc, *flags, "-c", "-o", f"{name}.o", srcs[0], "&&", t.cc, *flags, "-o", f"{name}.elf", f"{name}.o", srcs[1]]


def run_command(name: str, tgt: str) -> list[str]:
    """The emulator command (run in the export folder) that runs ``<name>.elf``."""
    t = target(tgt)
    if t.is_host:
        return [f"./{name}_harness"]
    return [*t.qemu, "-kernel", f"{name}.elf"]


def build_line(name: str, tgt: str) -> str:
    """A shell script: the build line, then how to run it (``<name>_build.sh`` of a target export)."""
    q = lambda args: " ".join(a if a == "&&" or re.fullmatch(r"[\w./=,:+-]+", a) else f"'{a}'" for a in args)  # noqa: E731
    t = target(tgt)
    io = "inputs on stdin, int32 logits on stdout" if t.is_host else f"inputs in {name}_in.bin, int32 logits to {name}_out.bin (semihosting)"
    return (
        "#!/bin/sh\n"
        f"# lowbit export-c --target {tgt} ({t.isa}): build, then run ({io})\n"
        "set -e\ncd \"$(dirname \"$0\")\"\n"
        f"{q(build_command(name, tgt))}\n"
        f"# {q(run_command(name, tgt))}\n"
    )


def build_target(out_dir: "str | os.PathLike[str]", tgt: str, *, name: str = "lowbit_model", opt: str = _OPT,
                 extra: Sequence[str] = ()) -> Path:
    """Compile and link the exported C (with its harness) for ``tgt``; returns the ELF (or host executable)."""
    t = target(tgt)
    miss = missing_tools(tgt)
    if miss:
        raise FileNotFoundError(f"target {tgt} needs {', '.join(miss)} (Debian: gcc-arm-none-eabi gcc-riscv64-unknown-elf "
                                "picolibc-arm-none-eabi picolibc-riscv64-unknown-elf qemu-system-arm qemu-system-misc)")
    d = Path(out_dir)
    for s in (f"{name}.c", f"{name}_main.c"):
        if not (d / s).is_file():
            raise FileNotFoundError(f"{d / s} is missing: export with harness=True first")
    cmd = build_command(name, tgt, opt=opt, extra=extra)
    if t.is_host:
        from .toolchain import find_cc

        cmd[0] = find_cc() or "cc"
    steps = [cmd]
    if "&&" in cmd:
        i = cmd.index("&&")
        steps = [cmd[:i], cmd[i + 1 :]]
    for step in steps:
        res = subprocess.run(step, cwd=d, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"build for {tgt} failed ({' '.join(step)}):\n{res.stderr[-4000:]}")
    return d / (f"{name}_harness" if t.is_host else f"{name}.elf")


def run_target(elf: "str | os.PathLike[str]", tgt: str, program: IntProgram, x_int: np.ndarray, *,
               timeout: float = 300.0) -> np.ndarray:
    """Run the built binary on integer inputs [N, input_size] (in QEMU for a target); return its int32 logits [N, outputs]."""
    t = target(tgt)
    if t.is_host:
        from .toolchain import run_harness

        return run_harness(elf, program, x_int, timeout=timeout)
    x = np.asarray(x_int)
    if x.ndim != 2 or x.shape[1] != program.input_size:
        raise ValueError(f"x_int must have shape [N, {program.input_size}], got {x.shape}")
    if x.size and (x.min() < program.input_lo or x.max() > program.input_hi):
        raise ValueError(f"x_int must lie in {program.input_lo}..{program.input_hi}")
    elf = Path(elf).resolve()
    name = elf.stem
    with tempfile.TemporaryDirectory(prefix="lowbit_qemu_") as tmp:
        # semihosting opens files relative to QEMU's working folder
        (Path(tmp) / f"{name}_in.bin").write_bytes(x.astype(np.int8 if program.input_lo < 0 else np.uint8).tobytes())
        cmd = [*t.qemu, "-kernel", str(elf)]
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        out_path = Path(tmp) / f"{name}_out.bin"
        if res.returncode != 0 or "inputs done" not in res.stdout + res.stderr or not out_path.is_file():
            raise RuntimeError(f"{' '.join(cmd)} exited with {res.returncode}:\n{(res.stdout + res.stderr)[-4000:]}")
        out = np.fromfile(out_path, dtype="<i4")
    n = x.shape[0]
    if out.size != n * program.num_outputs:
        raise RuntimeError(f"{elf.name} on {tgt} wrote {out.size} int32 values, expected {n} x {program.num_outputs}")
    return out.reshape(n, program.num_outputs).astype(np.int32)


@dataclass(frozen=True)
class LinkedSize:
    """Flash and RAM of a linked image (``size`` -A sections): flash = code + read-only data + data's
    initial values; RAM = data + bss (the stack picolibc.ld reserves is counted apart)."""

    text: int
    data: int
    bss: int
    stack: int

    @property
    def flash(self) -> int:
        """Flash bytes: .text/.rodata (all read-only sections) + initial values of .data."""
        return self.text + self.data

    @property
    def ram(self) -> int:
        """RAM bytes: .data + .bss, without the reserved stack."""
        return self.data + self.bss


def model_size(map_file: "str | os.PathLike[str]", obj: str = "lowbit_model.o") -> LinkedSize:
    """Flash and RAM the linker kept from the model's object file (the map file's input sections; harness and libc excluded)."""
    text = data = bss = 0
    lines = Path(map_file).read_text(errors="replace").splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Linker script and memory map"))
    except StopIteration:
        raise ValueError(f"{map_file} is not a GNU ld map file (no 'Linker script and memory map')") from None
    pending = None  # a long section name is printed on its own line, address and size on the next
    for ln in lines[start:]:
        m = re.match(r"^ (\.\S+)(?:\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S+))?\s*$", ln)
        if m and m.group(2) is None:
            pending = m.group(1)
            continue
        if m:
            sec, size, src = m.group(1), int(m.group(3), 16), m.group(4)
        else:
            m2 = re.match(r"^\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S+)\s*$", ln)
            if not (m2 and pending):
                pending = None
                continue
            sec, size, src = pending, int(m2.group(2), 16), m2.group(3)
        pending = None
        if not src.endswith(obj) or size == 0:
            continue
        if sec.startswith((".bss", ".sbss", "COMMON")):
            bss += size
        elif sec.startswith((".data", ".sdata")):
            data += size
        elif sec.startswith((".text", ".rodata", ".srodata")):
            text += size
    return LinkedSize(text, data, bss, 0)


def linked_size(elf: "str | os.PathLike[str]", tgt: str) -> LinkedSize:
    """Flash and RAM of the linked image, read with ``<prefix>-size -A`` (sections by name)."""
    t = target(tgt)
    res = subprocess.run([t.size if not t.is_host else "size", "-A", str(elf)], capture_output=True, text=True, check=True)
    text = data = bss = stack = 0
    for line in res.stdout.splitlines():
        m = re.match(r"(\.\S+)\s+(\d+)\s+(\d+)", line)
        if not m:
            continue
        sec, sz = m.group(1), int(m.group(2))
        if sec.startswith((".comment", ".debug", ".ARM.attributes", ".riscv.attributes", ".note", ".symtab", ".strtab", ".shstrtab")):
            continue
        if sec.startswith(".stack"):
            stack += sz
        elif sec.startswith((".bss", ".tbss", ".noinit")):
            bss += sz
        elif sec.startswith((".data", ".tdata", ".sdata")):
            data += sz
        elif sec.startswith(".heap"):
            continue
        else:
            text += sz
    return LinkedSize(text, data, bss, stack)


def linked_report(res: object, out_dir: "str | os.PathLike[str]", tgt: str, *, name: str = "lowbit_model",
                  flash: "str | int | None" = None, ram: "str | int | None" = None) -> str:
    """The build line, then (when the toolchain is here) the model's linked flash/RAM beside the estimate, checked against the budgets."""
    from .report import parse_bytes

    t = target(tgt)
    lines = [f"build ({t.isa}): sh {Path(out_dir) / f'{name}_build.sh'}", "  " + " ".join(build_command(name, tgt))]
    miss = missing_tools(tgt)
    if t.is_host or miss:
        if miss:
            lines.append(f"not built: {', '.join(miss)} missing")
        return "\n".join(lines)
    elf = build_target(out_dir, tgt, name=name)
    m = model_size(Path(out_dir) / f"{name}.map", f"{name}.o")
    img = linked_size(elf, tgt)
    est = res.report  # type: ignore[attr-defined]
    lines += [
        f"linked ({tgt}, {_OPT}): model flash {m.flash:,} B (estimate {est.flash:,}), model RAM {m.ram:,} B "
        f"(estimate {est.ram:,}, without the logits the caller holds); whole image with harness and picolibc: "
        f"flash {img.flash:,} B, RAM {img.ram:,} B + stack {img.stack:,} B",
    ]
    problems = []
    if flash is not None and m.flash > parse_bytes(flash):
        problems.append(f"linked flash {m.flash:,} B > budget {parse_bytes(flash):,} B")
    if ram is not None and m.ram > parse_bytes(ram):
        problems.append(f"linked RAM {m.ram:,} B > budget {parse_bytes(ram):,} B")
    if problems:
        raise ValueError(f"the model does not fit on {tgt}: " + "; ".join(problems))
    return "\n".join(lines)
