"""Acceptance figures on digits with the small CNN, and the QAT / float training step time.

    .venv/bin/python benchmarks/bench_models.py [--seed 0] [--threads 1]

Prints markdown: the accuracy table (float, PTQ and QAT at 8/4/3/2 bits,
against the targets of issue #4) and the step-time table (median of
interleaved steps on the same batch, so machine load hits both alike).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import lowbit
from lowbit.data import get_dataset, loader
from lowbit.models import build_model
from lowbit.nn import fold_bn
from lowbit.train import evaluate, fit, seed_everything

try:  # run as a script from the repo root, or imported as benchmarks.bench_models
    from _timing import step_time_table
except ImportError:  # pragma: no cover
    from benchmarks._timing import step_time_table


def accuracy_table(seed: int) -> str:
    """Float, PTQ and QAT accuracies on digits with the targets."""
    ds = get_dataset("digits")
    train, test = loader(ds.train, 64, shuffle=True, seed=seed), loader(ds.test, 256)
    seed_everything(seed)
    model = build_model("vgg", ds.input_shape, ds.num_classes)
    fit(model, train, epochs=15, lr=3e-3, progress=False)
    f = evaluate(model, test)
    rows = [("float", "", f, ">= 97", f >= 97)]
    targets = {8: 0.3, 4: 1.5}
    for b in (8, 4, 3, 2):
        a = evaluate(lowbit.convert(lowbit.quantize(model, {"*": f"int{b}:channel:mse"})), test)
        t = targets.get(b)
        rows.append((f"W{b} PTQ", f"int{b}:channel:mse", a, f"within {t} pt" if t else "-", a >= f - t if t else None))
    qat_targets = {4: 0.5, 2: 2.0}
    for b in (8, 4, 3, 2):
        seed_everything(seed)
        q = lowbit.prepare_qat(model, {"*": f"int{b}:channel:lsq.mse"})
        fit(q, train, epochs=5, lr=3e-4 if b >= 4 else 1e-3, progress=False)
        a = evaluate(lowbit.convert(q), test)
        t = qat_targets.get(b)
        rows.append((f"W{b} QAT", f"int{b}:channel:lsq.mse", a, f"within {t} pt" if t else "-", a >= f - t if t else None))
    lines = ["| model | spec | accuracy (%) | Δ vs float (pt) | target | met |", "|---|---|---:|---:|---|---|"]
    for name, spec, a, target, ok in rows:
        met = "" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {name} | {spec} | {a:.2f} | {a - f:+.2f} | {target} | {met} |")
    return "\n".join(lines)


def step_times(seed: int, steps: int = 60) -> str:
    """Median training step time of float and QAT models (interleaved), and the ratios."""
    seed_everything(seed)
    model = build_model("vgg", (1, 8, 8), 10)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    folded = copy.deepcopy(model).eval()
    fold_bn(folded)
    variants = {
        "float (BN)": model,
        "float, BN folded": folded,
        "W4 QAT lsq (int4:channel:lsq)": lowbit.prepare_qat(model, "w4:lsq"),
        "W4 QAT minmax (int4:channel)": lowbit.prepare_qat(model, "*=int4:channel"),
        "W4A8 QAT lsq + uint8 inputs": lowbit.prepare_qat(model, "w4:lsq,a:*=uint8"),
        "W4 QAT mse refit per step (int4:channel:mse)": lowbit.prepare_qat(model, "w4"),
    }
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in variants.items()}
    return step_time_table("training step (batch 64, small CNN)", variants, opts, x, y, steps)


def main() -> None:
    """Print both tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"## Digits, small VGG (seed {args.seed}, {args.threads} thread(s), torch {torch.__version__})\n")
    print(accuracy_table(args.seed))
    print()
    print(step_times(args.seed))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
