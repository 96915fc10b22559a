"""``lowbit demo``, the main job: float -> PTQ and QAT at 8, 4, 3, 2 bits on digits; table and plots.

Trains the float reference (small VGG, BN folded before quantization), then for
each bit width: post-training quantization with a few formats and ranges, and
quantization-aware training with LSQ and with DoReFa weights. Prints the accuracy table (markdown) and
writes ``results.md``, ``results.json``, ``weights_hist.png`` (a layer's weight
histogram with the quantization levels drawn over it) and
``accuracy_vs_bits.png`` into the report folder, plus the W4 QAT integer model.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from ..api import convert, prepare_qat, quantize, save
from ..config import QuantConfig
from ..data import get_dataset, loader
from ..models import build_model, model_names
from ..quantizer import quantizer
from ..train import evaluate, fit, seed_everything
from ..fileio import write_text
from ._common import add_common, add_no_plots, add_out, data_packages, parse_ints, pyplot, save_figure, setup

HELP = "the main job: train on digits, then PTQ and QAT at 8/4/3/2 bits; accuracy table and plots"

# method name -> config template ({b} = bits); a method whose config does not build is skipped.
PTQ_METHODS = {
    "PTQ minmax/tensor": "*=int{b}:tensor",
    "PTQ MSE/channel": "*=int{b}:channel:mse",
    "PTQ MSE/channel + A8": "*=int{b}:channel:mse,a8",
    "PTQ OCTAV/channel": "*=int{b}:channel:octav",
    "PTQ NF4/channel": "*=nf4:channel",
}
# method name -> (config template, learning rate for >= 4 bits, below 4 bits)
QAT_METHODS = {
    "QAT LSQ/channel": ("*=int{b}:channel:lsq.mse", 3e-4, 1e-3),
    # DoReFa's weights live in [-1, 1], not in the weight's units: BN stays (unfolded) to absorb the scale
    "QAT DoReFa (BN kept, classifier int8)": ("*=dorefa{b},classifier=int8:channel,fold_bn=false", 1e-3, 1e-3),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit demo``."""
    add_common(p)
    p.add_argument("--model", default="vgg", choices=model_names(), help="reference model (default: vgg)")
    p.add_argument("--bits", default="8,4,3,2", help="comma-separated bit widths (default: 8,4,3,2)")
    p.add_argument("--epochs", type=int, default=15, help="float training epochs (default: 15)")
    p.add_argument("--qat-epochs", type=int, default=5, help="QAT epochs per bit width (default: 5)")
    add_out(p, "reports/demo", "report folder")
    add_no_plots(p)


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """Packages this run needs: the dataset's reader and matplotlib unless ``--no-plots``."""
    return data_packages(args.data) + (() if args.no_plots else ("matplotlib",))


def _config(template: str, bits: int) -> str | None:
    cfg = template.format(b=bits)
    try:
        spec = QuantConfig.parse(cfg).weights.get("*")
        if spec is not None and quantizer(spec).bits != bits:
            return None  # e.g. NF4 exists at 4 bits only
    except ValueError:
        return None  # a format this installation does not have
    return cfg


def _table(results: dict[str, dict[int, float]], bits: list[int], float_acc: float) -> str:
    head = "| method | " + " | ".join(f"W{b}" for b in bits) + " |"
    lines = [head, "|---|" + "---:|" * len(bits), f"| float | " + " | ".join(f"{float_acc:.2f}" for _ in bits) + " |"]
    for method, row in results.items():
        cells = [f"{row[b]:.2f}" if b in row else "–" for b in bits]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plots(out: Path, model: nn.Module, results: dict[str, dict[int, float]], bits: list[int], float_acc: float,
           title: str) -> list[str]:
    import copy

    from ..nn.fold import fold_bn

    plt = pyplot()
    folded = copy.deepcopy(model).eval()
    fold_bn(folded)
    weighted = [n for n, m in folded.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    name = weighted[1] if len(weighted) > 1 else weighted[0]  # the second layer: a typical hidden one
    w = folded.get_submodule(name).weight.detach().flatten()
    panel_bits = [b for b in (4, 3, 2) if b in bits] or bits[:1]
    fig, axes = plt.subplots(1, len(panel_bits), figsize=(5 * len(panel_bits), 3.8), squeeze=False)
    for ax, b in zip(axes[0], panel_bits):
        q = quantizer(f"int{b}:tensor:mse")
        q.fit(w)
        levels = q.fmt.levels * q.scale
        ax.hist(w.numpy(), bins=120, color="#4c72b0", alpha=0.8, label="float weights")
        for i, lv in enumerate(levels.tolist()):
            ax.axvline(lv, color="#dd5555", lw=0.8, label=f"int{b} levels" if i == 0 else None)
        ax.set_title(f"int{b} (per tensor, MSE range): {len(levels)} levels", fontsize=9)
        ax.set_xlabel("weight value")
        ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("number of weights")
    fig.suptitle(f"{title}: layer {name} weights (BN folded) and the quantization levels", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / "weights_hist.png")

    # left: every method over the full range; right: the same lines zoomed to 90-100 %, where methods differ
    # (or to the 10 points below float when the model is weaker); bit widths evenly spaced, most bits first
    order = sorted(bits, reverse=True)
    pos = {b: i for i, b in enumerate(order)}
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(11, 4.8))
    lows = [float_acc] + [v for r in results.values() for v in r.values()]
    for a in (ax, zoom):
        for i, (method, row) in enumerate(results.items()):
            bs = [b for b in order if b in row]
            a.plot([pos[b] for b in bs], [row[b] for b in bs], marker="o", color=f"C{i}", label=method)
        a.axhline(float_acc, color="k", ls="--", lw=1, label=f"float ({float_acc:.2f} %)")
        a.set_xlabel("weight bits")
        a.set_xticks(range(len(order)), [f"W{b}" for b in order])
        a.grid(alpha=0.3)
    ax.set_ylim(max(0.0, min(lows) - 5), 100.5)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("all methods", fontsize=9)
    lo = 90.0 if float_acc >= 92 else max(0.0, float(int(float_acc)) - 10)
    zoom.set_ylim(lo, min(100.0, max(lows) + 1) + 0.2)
    zoom.set_title(f"zoom: {lo:.0f}-100 % (points below are off the panel)", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{title}: test accuracy vs weight bits (PTQ and QAT)", fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    save_figure(fig, out / "accuracy_vs_bits.png")
    return ["weights_hist.png", "accuracy_vs_bits.png"]


def run(args: argparse.Namespace) -> int:
    """Run the demo; print the table; write the report folder."""
    setup(args)
    t_start = time.perf_counter()
    bits = parse_ints(args.bits, "--bits", 1, 16)
    for name in ("epochs", "qat_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    out = Path(args.out)
    ds = get_dataset(args.data)
    out.mkdir(parents=True, exist_ok=True)
    train = loader(ds.train, 64, shuffle=True, seed=args.seed)
    test = loader(ds.test, 256)
    model = build_model(args.model, ds.input_shape, ds.num_classes)
    hist = fit(model, train, epochs=args.epochs, lr=3e-3, desc="float")
    float_acc = evaluate(model, test)
    tags = {"lowbit.data": args.data, "lowbit.seed": str(args.seed)}
    save(model, out / "float.lowbit", metadata=tags)
    print(f"float {args.model} on {ds.name}: {float_acc:.2f} % ({hist.time_per_step * 1e3:.1f} ms/step)")

    results: dict[str, dict[int, float]] = {}
    for method, template in PTQ_METHODS.items():
        for b in bits:
            cfg = _config(template, b)
            if cfg is None:
                continue
            qm = convert(quantize(model, cfg, calib=train))
            results.setdefault(method, {})[b] = evaluate(qm, test)
    for method, (template, lr_hi, lr_lo) in QAT_METHODS.items():
        for b in bits:
            cfg = _config(template, b)
            if cfg is None:
                continue
            seed_everything(args.seed)
            qm = prepare_qat(model, cfg)
            fit(qm, train, epochs=args.qat_epochs, lr=lr_hi if b >= 4 else lr_lo, desc=f"qat w{b}")
            im = convert(qm)
            results.setdefault(method, {})[b] = evaluate(im, test)
            if b == 4 and method.startswith("QAT LSQ"):
                save(im, out / "w4_qat_int.lowbit", metadata=tags)

    table = _table(results, bits, float_acc)
    print()
    print(table)
    wall = time.perf_counter() - t_start
    # the results first: a figure that fails must never cost the table
    write_text(out / "results.md",
               f"# lowbit demo ({ds.name}, {args.model}, seed {args.seed})\n\nTest accuracy (%), BN folded, "
               f"weights quantized (A8 rows: 8-bit inputs too).\n\n{table}\n\nWall time {wall:.1f} s.\n")
    write_text(out / "results.json", json.dumps(
        {"data": ds.name, "model": args.model, "seed": args.seed, "float": float_acc,
         "results": {m: {str(b): a for b, a in r.items()} for m, r in results.items()}, "wall_s": wall}, indent=1) + "\n")
    title = f"{ds.name}, {args.model} (seed {args.seed})"
    files = [] if args.no_plots else _plots(out, model, results, bits, float_acc, title)
    print(f"\nreport: {out}/ (results.md, results.json{''.join(', ' + f for f in files)}); {wall:.1f} s")
    return 0
