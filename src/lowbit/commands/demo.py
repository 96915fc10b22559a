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
from ._common import add_common, setup

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
    p.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo)")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures")


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


def _plots(out: Path, model: nn.Module, results: dict[str, dict[int, float]], bits: list[int], float_acc: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import copy

    from ..nn.fold import fold_bn

    folded = copy.deepcopy(model).eval()
    fold_bn(folded)
    weighted = [n for n, m in folded.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    name = weighted[1] if len(weighted) > 1 else weighted[0]  # the second layer: a typical hidden one
    w = folded.get_submodule(name).weight.detach().flatten()
    panel_bits = [b for b in (4, 3, 2) if b in bits] or bits[:1]
    fig, axes = plt.subplots(1, len(panel_bits), figsize=(5 * len(panel_bits), 3.6), squeeze=False)
    for ax, b in zip(axes[0], panel_bits):
        q = quantizer(f"int{b}:tensor:mse")
        q.fit(w)
        levels = q.fmt.levels * q.scale
        ax.hist(w.numpy(), bins=120, color="#4c72b0", alpha=0.8)
        for lv in levels.tolist():
            ax.axvline(lv, color="#dd5555", lw=0.8)
        ax.set_title(f"{name} weights (BN folded), int{b} MSE levels")
        ax.set_xlabel("weight")
    axes[0][0].set_ylabel("count")
    fig.tight_layout()
    fig.savefig(out / "weights_hist.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, row in results.items():
        bs = [b for b in bits if b in row]
        ax.plot(bs, [row[b] for b in bs], marker="o", label=method)
    ax.axhline(float_acc, color="k", ls="--", lw=1, label="float")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(bits)
    ax.set_ylim(max(0, min([float_acc] + [v for r in results.values() for v in r.values()]) - 5), 100)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_bits.png", dpi=120)
    plt.close(fig)
    return ["weights_hist.png", "accuracy_vs_bits.png"]


def run(args: argparse.Namespace) -> int:
    """Run the demo; print the table; write the report folder."""
    setup(args)
    t_start = time.perf_counter()
    try:
        bits = [int(b) for b in args.bits.split(",")]
    except ValueError:
        raise ValueError(f"--bits must be comma-separated integers such as 8,4,3,2, got {args.bits!r}") from None
    if not bits or any(not 1 <= b <= 16 for b in bits):
        raise ValueError(f"--bits must hold bit widths in 1..16, got {args.bits!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = get_dataset(args.data)
    train = loader(ds.train, 64, shuffle=True, seed=args.seed)
    test = loader(ds.test, 256)
    model = build_model(args.model, ds.input_shape, ds.num_classes)
    hist = fit(model, train, epochs=args.epochs, lr=3e-3, desc="float")
    float_acc = evaluate(model, test)
    save(model, out / "float.lowbit", metadata={"lowbit.data": args.data})
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
                save(im, out / "w4_qat_int.lowbit", metadata={"lowbit.data": args.data})

    table = _table(results, bits, float_acc)
    print()
    print(table)
    files = [] if args.no_plots else _plots(out, model, results, bits, float_acc)
    wall = time.perf_counter() - t_start
    (out / "results.md").write_text(
        f"# lowbit demo ({ds.name}, {args.model}, seed {args.seed})\n\nTest accuracy (%), BN folded, "
        f"weights quantized (A8 rows: 8-bit inputs too).\n\n{table}\n\nWall time {wall:.1f} s.\n"
    )
    (out / "results.json").write_text(json.dumps(
        {"data": ds.name, "model": args.model, "seed": args.seed, "float": float_acc,
         "results": {m: {str(b): a for b, a in r.items()} for m, r in results.items()}, "wall_s": wall}, indent=1))
    print(f"\nreport: {out}/ (results.md, results.json{''.join(', ' + f for f in files)}); {wall:.1f} s")
    return 0
