"""``lowbit sensitivity``: each layer's accuracy drop / loss increase when it alone is quantized; bits under a budget.

Takes a saved float model (``lowbit train``) or trains the reference model on ``--data``
(as ``lowbit demo`` does), measures every Conv/Linear layer alone at each of ``--bits`` on a
held-out slice of the training set (the test set stays unseen), adds the Hessian-trace
estimate, prints the table and the mixed-precision config for ``--budget`` bits per weight
with its test accuracy, and writes ``sensitivity.md`` and ``sensitivity.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..fileio import write_text
from ._common import add_common, add_no_plots, add_out, data_packages, parse_ints, pyplot, save_figure, setup

HELP = "per-layer sensitivity to weight quantization (8/4/3/2 bits) and a mixed-precision config under a bit budget"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit sensitivity``."""
    p.add_argument("checkpoint", nargs="?", default=None, help="a float model saved by 'lowbit train' (default: train --model on --data)")
    add_common(p, data_from_checkpoint=True)
    p.add_argument("--bits", default="8,4,3,2", help="comma-separated bit widths (default: 8,4,3,2)")
    p.add_argument("--budget", type=float, default=3.0, help="average weight bits for the mixed-precision config (default: 3)")
    p.add_argument("--method", default="nearest", choices=("nearest", "gptq", "adaround"),
                   help="PTQ rounding for the measurements and the mixed model (default: nearest)")
    p.add_argument("--model", default="vgg", help="reference model to train when no checkpoint is given (default: vgg)")
    p.add_argument("--epochs", type=int, default=15, help="float training epochs when no checkpoint is given (default: 15)")
    add_out(p, "reports/sensitivity", "report folder")
    add_no_plots(p)


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """The reader of ``--data``; matplotlib unless ``--no-plots``."""
    return data_packages(args.data or "digits") + (() if args.no_plots else ("matplotlib",))


def _plot(path: Path, sens: object, title: str) -> None:
    plt = pyplot()
    layers, bits = sens.layers, sens.bits  # type: ignore[attr-defined]
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(bits)
    for i, b in enumerate(bits):
        ax.bar([j + i * width for j in range(len(layers))], [max(1e-6, sens.loss_increase[n][b]) for n in layers],  # type: ignore[attr-defined]
               width=width, label=f"W{b}")
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("loss increase, this layer alone quantized (log)")
    ax.legend(fontsize=8)
    ax.set_title("measured", fontsize=9)
    hx.bar(range(len(layers)), [sens.trace[n] for n in layers])  # type: ignore[attr-defined]
    hx.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=8)
    hx.set_ylabel("tr(H) / n (Hutchinson)")
    hx.set_title("Hessian-trace estimate", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    """Measure, print the table and the mixed-precision config; write the report."""
    from ..algorithms.mixed_precision import average_bits, choose_bits, mixed_precision
    from ..algorithms.sensitivity import sensitivity
    from ..api import quantize
    from ..data import get_dataset, loader
    from ..models import build_model
    from ..train import evaluate, fit
    from ._common import load_model

    setup(args)
    bits = parse_ints(args.bits, "--bits", 1, 16)
    if not min(bits) <= args.budget <= max(bits):
        raise ValueError(f"--budget must lie between the smallest and largest of --bits ({min(bits)}..{max(bits)}), got {args.budget}")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.checkpoint:
        model, meta, ds = load_model(args.checkpoint, args.data)
        data = args.data or meta.get("lowbit.data") or "digits"
    else:
        data = args.data or "digits"
        ds = get_dataset(data)
        model = build_model(args.model, ds.input_shape, ds.num_classes)
        fit(model, loader(ds.train, 64, shuffle=True, seed=args.seed), epochs=args.epochs, lr=3e-3, desc="float")
    model.eval()
    test = loader(ds.test, 256)
    calib = list(loader(ds.train, 64, shuffle=True, seed=args.seed))[:8]
    held = list(loader(ds.train, 256, shuffle=True, seed=args.seed + 1))[:4]
    sens = sensitivity(model, calib, held, bits=bits, method=args.method, seed=args.seed)
    choice = choose_bits(sens, args.budget)
    cfg = mixed_precision(model, calib, budget=args.budget, sens=sens)
    acc_f = evaluate(model, test)
    acc_m = evaluate(quantize(model, cfg, calib=calib, method=args.method), test)
    table = sens.table()
    summary = (f"mixed precision at <= {args.budget:g} bits/weight ({average_bits(choice, sens.params):.2f} used): {cfg}\n"
               f"test accuracy: float {acc_f:.2f} %, mixed ({args.method}) {acc_m:.2f} % ({acc_m - acc_f:+.2f} pt)")
    print(table + "\n\n" + summary)
    out = Path(args.out)
    write_text(out / "sensitivity.md", f"# lowbit sensitivity ({data}, seed {args.seed})\n\nAccuracy drop (points) and "
               f"loss increase on a held-out slice of the training set, one layer quantized at a time "
               f"(int<b>:channel:mse, {args.method}).\n\n{table}\n\n{summary}\n")
    if not args.no_plots:
        _plot(out / "sensitivity.png", sens, f"{data}: per-layer sensitivity (seed {args.seed})")
        print(f"plot: {out / 'sensitivity.png'}")
    print(f"table: {out / 'sensitivity.md'}")
    return 0
