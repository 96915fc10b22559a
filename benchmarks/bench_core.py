"""Core benchmark: time to quantize and pack 1e7 weights per spec, and bytes on disk against the ideal.

Time is a ratio to one elementwise pass (``x * c``) over the same tensor,
measured in the same run (medians of --repeat runs). Run:

    .venv/bin/python benchmarks/bench_core.py            # or: make bench
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile

import torch

from _timing import wall_times  # benchmarks/ is on sys.path when a script runs

from lowbit import quantizer, save_qtensors

SPECS = [
    "int8", "int8:channel", "uint8", "int4", "int4:channel", "int4:group128", "uint4:group128",
    "int3:channel", "int2:channel", "int1", "fxp8:p99", "fxp4:p99:channel", "int4:channel:mse",
]


def median_time(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs (after one warm-up)."""
    return statistics.median(wall_times(fn, repeat))


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cols = 1024
    rows = args.numel // cols
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(args.seed)) * 0.02
    n = x.numel()
    base = median_time(lambda: x * 1.0001, args.repeat)
    print(f"lowbit core benchmark: {n:,} float32 weights ({rows}x{cols}), {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"one elementwise pass: {1e3 * base:.1f} ms (median of {args.repeat})\n")
    print("| spec | encode ms | × elementwise pass | fake-quant ms | × pass | file bytes | ideal bytes | over ideal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for spec in SPECS:
            q = quantizer(spec)
            t_enc = median_time(lambda: q.encode(x), args.repeat)
            t_fq = median_time(lambda: q(x), args.repeat)
            qt = q.encode(x)
            path = os.path.join(d, "w.safetensors")
            save_qtensors(path, {"w": qt})
            size = os.path.getsize(path)
            ideal = n * qt.bits / 8 + 4 * (qt.scale.numel() + (0 if qt.zero_point is None else qt.zero_point.numel()))
            print(f"| {spec} | {1e3 * t_enc:.0f} | {t_enc / base:.1f} | {1e3 * t_fq:.0f} | {t_fq / base:.1f} | "
                  f"{size:,} | {int(ideal):,} | {100 * (size / ideal - 1):.3f} % |")


if __name__ == "__main__":
    main()
