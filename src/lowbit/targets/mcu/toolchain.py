"""Build and run the exported C on the host: the check that C and the NumPy reference agree.

::

    res = export(model, "out/", calib=x, harness=True)
    exe = compile_harness("out/")                      # cc -std=c99 -Wall -Wextra -Werror -O2
    logits = run_harness(exe, res.program, res.program.quantize_input(x_test))
    assert (logits == reference.run(res.program, res.program.quantize_input(x_test))).all()
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np

from .lower import IntProgram

__all__ = ["find_cc", "compile_harness", "run_harness", "STRICT_FLAGS", "SANITIZE_FLAGS"]

STRICT_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")


def find_cc() -> str | None:
    """The system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``), or None."""
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def compile_harness(
    out_dir: "str | os.PathLike[str]",
    *,
    name: str = "lowbit_model",
    opt: str = "-O2",
    extra: Sequence[str] = (),
    exe_name: str | None = None,
) -> Path:
    """Compile ``<name>.c`` + ``<name>_main.c`` (export with ``harness=True``) with strict C99 flags; return the executable."""
    cc = find_cc()
    if cc is None:
        raise FileNotFoundError("no C compiler found: install cc/gcc/clang or set $CC")
    d = Path(out_dir)
    srcs = [d / f"{name}.c", d / f"{name}_main.c"]
    for s in srcs:
        if not s.is_file():
            raise FileNotFoundError(f"{s} is missing: export with harness=True first")
    exe = d / (exe_name or f"{name}_harness")
    cmd = [cc, *STRICT_FLAGS, opt, *extra, "-o", str(exe), *map(str, srcs)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"compilation failed ({' '.join(cmd)}):\n{res.stderr}")
    return exe


def run_harness(exe: "str | os.PathLike[str]", program: IntProgram, x_int: np.ndarray, *, timeout: float = 120.0) -> np.ndarray:
    """Feed integer inputs [N, input_size] to the compiled harness on stdin; return its int32 logits [N, outputs]."""
    x = np.asarray(x_int)
    dtype = np.int8 if program.input_lo < 0 else np.uint8
    if x.size and (x.min() < program.input_lo or x.max() > program.input_hi):
        raise ValueError(f"x_int must lie in {program.input_lo}..{program.input_hi}")
    res = subprocess.run([str(exe)], input=x.astype(dtype).tobytes(), capture_output=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{exe} exited with {res.returncode}:\n{res.stderr.decode(errors='replace')[-4000:]}")
    out = np.frombuffer(res.stdout, dtype=np.int32)
    n = x.shape[0]
    if out.size != n * program.num_outputs:
        raise RuntimeError(f"{exe} wrote {out.size} int32 values, expected {n} x {program.num_outputs}")
    return out.reshape(n, program.num_outputs)
