"""A tour of the formats: quantize one seeded weight tensor with every spec and print the error table."""
from __future__ import annotations

import argparse
import math
import time

import torch

from ..quantizer import quantizer
from ._common import add_progress, add_seed, add_threads, setup

HELP = "quantize a seeded weight tensor with every format and print the error table"

# Core specs first; the codebook formats join when they are registered.
TOUR_SPECS = [
    "int8", "int8:channel", "uint8", "fxp8:p99",
    "int4", "int4:channel", "int4:channel:mse", "int4:group64", "uint4:group64", "fxp4:p99",
    "nf4", "fp4:group32", "apot4", "pot4", "4bitsym", "dorefa4",
    "int3:channel:mse", "fxp3:p99",
    "int2:channel:mse", "2bitsym", "ternary", "binary", "fxp2:p99",
]


def available_specs() -> list[str]:
    """The tour's specs that this installation can build."""
    out = []
    for s in TOUR_SPECS:
        try:
            quantizer(s)
        except ValueError:
            continue
        out.append(s)
    return out


def error_table(w: torch.Tensor, specs: list[str]) -> list[dict[str, float | str]]:
    """Per spec: bits per weight (scales included), relative MSE, SQNR, worst error, encode time."""
    rows = []
    var = float(w.var())
    for spec in specs:
        q = quantizer(spec)
        t0 = time.perf_counter()
        qt = q.encode(w)
        dt = time.perf_counter() - t0
        err = qt.dequantize() - w
        mse = float((err**2).mean())
        rows.append(
            {
                "spec": spec,
                "bits/weight": qt.bits_per_value,
                "MSE/var": mse / var,
                "SQNR dB": 10 * math.log10(var / mse) if mse > 0 else math.inf,
                "max|err|/std": float(err.abs().max()) / math.sqrt(var),
                "encode ms": 1e3 * dt,
            }
        )
    return rows


def format_table(rows: list[dict[str, float | str]]) -> str:
    """A markdown table of the error rows."""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c == "spec" else "---:" for c in cols) + "|"]
    for r in rows:
        cells = [r[c] if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols]
        out.append("| " + " | ".join(cells) + " |")  # type: ignore[arg-type]
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit tour``."""
    add_seed(p, "seed of the weight tensor")
    add_threads(p)
    add_progress(p)
    p.add_argument("--shape", type=int, nargs=2, default=(512, 1024), metavar=("OUT", "IN"),
                   help="weight shape (default 512 1024)")
    p.add_argument("--std", type=float, default=0.02, help="standard deviation of the weights (default 0.02)")
    p.add_argument("--spec", action="append", default=None, help="spec to include (repeatable; default: all)")


def run(args: argparse.Namespace) -> int:
    """Print the error table of every spec on one seeded Gaussian weight tensor."""
    if args.std <= 0 or min(args.shape) < 1:
        raise ValueError("--std must be > 0 and --shape positive")
    setup(args)
    specs = args.spec or available_specs()
    for spec in specs:  # a typo fails before any work, with the spec parser's suggestion
        quantizer(spec)
    g = torch.Generator().manual_seed(args.seed)
    w = torch.randn(*args.shape, generator=g) * args.std
    print(f"lowbit tour: N(0, {args.std}) weights of shape {tuple(args.shape)}, seed {args.seed}\n")
    print(format_table(error_table(w, specs)))
    return 0
