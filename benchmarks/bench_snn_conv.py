"""Convolutional SNN accuracy on spike-encoded digits: float vs 8-bit and 4-bit QAT, over seeds.

    python benchmarks/bench_snn_conv.py --seeds 0 1 2 3 4 5      # the README table (a few minutes per seed)
    python benchmarks/bench_snn_conv.py --seeds 0 --threads 1

Spike-encoded 8x8 digits (latency code, 16 steps; 70/30 split, seed 0), a
:class:`lowbit.snn.conv.ConvSNN` ``((1, 8, 8), channels=(8, 16), kernel=3, pool=2)`` trained
5 float epochs (batch 32, lr 5e-3, BPTT), then each QAT variant fine-tuned from the float
network at lr 1e-3: W8 (``fxp8:p99``) one epoch, W4 (``fxp4:p99``) two. One line per seed,
then the table (mean and range over seeds, in percent). Accuracies vary with the machine's
floating-point kernels (ATEN_CPU_CAPABILITY), not with load.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lowbit.data.spiking import spiking_digits, split  # noqa: E402
from lowbit.snn import evaluate, train  # noqa: E402
from lowbit.snn.conv import ConvSNN  # noqa: E402

VARIANTS = (("W8 (fxp8:p99) QAT", "fxp8:p99", 1), ("W4 (fxp4:p99) QAT", "fxp4:p99", 2))


def seed_row(seed: int, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor) -> dict[str, float]:
    """Float and every QAT variant's test accuracy (fraction) for one seed."""
    m = ConvSNN((1, 8, 8), channels=(8, 16), kernel=3, pool=2, n_out=10, seed=seed, init_scale=2.0)
    train(m, xtr, ytr, epochs=5, batch_size=32, lr=5e-3, seed=seed)
    row = {"float": evaluate(m, xte, yte)}
    for label, spec, epochs in VARIANTS:
        q = copy.deepcopy(m).quantize_weights(spec)
        train(q, xtr, ytr, epochs=epochs, batch_size=32, lr=1e-3, seed=seed + 1)
        row[label] = evaluate(q, xte, yte)
    return row


def table(rows: dict[int, dict[str, float]]) -> str:
    """Mean and range over seeds per network, in percent, as markdown."""
    names = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    vals = {n: [100 * r[n] for r in rows.values()] for n in names}
    lines.append(f"| mean over {len(rows)} | " + " | ".join(f"{sum(v) / len(v):.1f} %" for v in vals.values()) + " |")
    lines.append("| range | " + " | ".join(f"{min(v):.1f}-{max(v):.1f} %" for v in vals.values()) + " |")
    return "\n".join(lines)


def main() -> int:
    """Train and evaluate every seed, print one line per seed and the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the per-seed accuracies to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = spiking_digits(num_steps=16)
    xtr, ytr, xte, yte = split(x, y, 0.3, seed=0)
    rows: dict[int, dict[str, float]] = {}
    for s in args.seeds:
        rows[s] = seed_row(s, xtr, ytr, xte, yte)
        print(f"seed {s}: " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in rows[s].items()), flush=True)
    print()
    print(table(rows))
    if args.json:
        from lowbit.fileio import write_text

        write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
