"""Format benchmark: quantization error, storage and encode time of every codebook at 2, 3 and 4 bits.

Weights are ~1e6 draws (1000 x 1024) from a Gaussian and a Laplacian of unit
variance. For each spec: the mean squared error relative to the variance, the
storage in bits per weight with scales (and double-quantized scales, trit
packing where marked), and the best time of ``q.encode(w)`` (range fit,
encoding and packing). Run:

    .venv/bin/python benchmarks/bench_formats.py [--seed 0] [--repeat 3]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
from typing import Callable

import torch

from _timing import wall_times  # benchmarks/ is on sys.path when a script runs

from lowbit.qtensor_storage import bits_per_param, double_quantize
from lowbit.quantizers import build_quantizer

# (label, spec, bits, extra): extra is "dq" (double-quantized scales), "trits" (base-3 packing)
# or "e8m0" (power-of-two scales stored as 8-bit exponents)
ROWS = [
    *[(f"int{b} per channel", f"int{b}:channel", b, "") for b in (2, 3, 4)],
    *[(f"int{b} per channel, mse", f"int{b}:channel:mse", b, "") for b in (2, 3, 4)],
    *[(f"int{b} group64", f"int{b}:group64", b, "") for b in (2, 3, 4)],
    *[(f"{b}bitsym (BitNetMCU, octav)", f"{b}bitsym", b, "") for b in (2, 3, 4)],
    *[(f"{b}bitsym per channel, octav", f"{b}bitsym:channel", b, "") for b in (2, 3, 4)],
    *[(f"pot{b} per channel, mse", f"pot{b}:channel:mse", b, "") for b in (2, 3, 4)],
    *[(f"apot{b} per channel, mse", f"apot{b}:channel:mse", b, "") for b in (3, 4)],
    *[(f"dorefa{b} †", f"dorefa{b}", b, "") for b in (2, 3, 4)],
    ("binary (sign around the mean)", "binary", 1, ""),
    ("ternary (absmean)", "ternary", 2, ""),
    ("ternary (absmean), 5 trits/byte", "ternary", 2, "trits"),
    ("ternary per channel", "ternary:channel", 2, ""),
    ("4bit (two's complement, octav)", "4bit", 4, ""),
    ("fp130 (octav)", "fp130", 4, ""),
    ("nf4 (group64 absmax)", "nf4", 4, ""),
    ("nf4 + double quantization", "nf4", 4, "dq"),
    ("fp4 e2m1 per channel", "fp4:channel", 4, ""),
    ("fp4 group32, pow2 (no clipping)", "fp4:group32:pow2", 4, ""),
    ("mxfp4 (OCP MX: group32, E8M0 scales)", "mxfp4", 4, "e8m0"),
]


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``fn()`` in ms over ``repeat`` runs (after one warm-up): the least disturbed by load."""
    return 1e3 * min(wall_times(fn, repeat))


def measure(spec: str, extra: str, w: torch.Tensor, repeat: int, timed: bool) -> tuple[float, float, float]:
    """(relative MSE, bits per weight, encode ms) of one spec on ``w``."""
    q = build_quantizer(spec)
    qt = q.encode(w)
    dq = None
    if extra == "dq":
        qt, dq = double_quantize(qt)
    target = w
    if spec.startswith("dorefa"):  # DoReFa's output lives in [-1, 1]: compare with its own target
        t = torch.tanh(w)
        target = t / t.abs().max()
    err = float(((qt.dequantize() - target) ** 2).mean() / target.var())
    bpw = bits_per_param(qt, dq, trits=extra == "trits", scale_bits=8 if extra == "e8m0" else 32)
    return err, bpw, best_ms(lambda: q.encode(w), repeat) if timed else math.nan


def main() -> None:
    """Print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    shape = (1000, 1024)
    gauss = torch.randn(shape, generator=g)
    # Laplace(0, b) has variance 2 b^2: b = 1/sqrt(2) for unit variance (inverse CDF of a uniform).
    u = torch.rand(shape, generator=g) - 0.5
    laplace = -torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2)
    print(f"lowbit format benchmark: {gauss.numel():,} weights per distribution, seed {args.seed}, "
          f"load average {os.getloadavg()[0]:.1f}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}\n")
    print("| format | spec | bits | Gaussian MSE/var | Laplacian MSE/var | bits/weight | encode ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, spec, bits, extra in sorted(ROWS, key=lambda r: r[2]):
        eg, bpw, ms = measure(spec, extra, gauss, args.repeat, timed=extra in ("", "e8m0"))
        el = measure(spec, extra, laplace, args.repeat, timed=False)[0]
        t = "" if math.isnan(ms) else f"{ms:.1f}"
        print(f"| {label} | `{spec}` | {bits} | {eg:.4f} | {el:.4f} | {bpw:.3f} | {t} |")
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f} (encode times compare only on a quiet machine).")
    print("\n† DoReFa maps weights to [-1, 1] through tanh: its error is against tanh(w)/max|tanh(w)|.")


if __name__ == "__main__":
    main()
