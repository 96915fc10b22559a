"""``lowbit cim``: accuracy of a W4A4 DoReFa/PACT model on simulated RRAM crossbars (cells x ADC x variation).

The command trains (or loads) the model; :mod:`lowbit.targets.cim` only simulates a model it is given.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..fileio import write_text
from ._common import (add_data, add_no_plots, add_out, add_progress, add_seed, add_threads, data_packages, load_model,
                      model_arch, pyplot, save_figure, setup)

HELP = "accuracy of a W4A4 DoReFa/PACT model on simulated RRAM crossbars (cell bits x ADC bits x variation)"

QAT_CONFIG = "*=dorefa4,a:*=uint4:pact,fold_bn=false"
PACT_ALPHA_INIT = 3.0


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lowbit cim``."""
    parser.add_argument("--model", help="a lowbit.save file of a QAT model to load instead of training one")
    parser.add_argument("--save", help="write the trained QAT model here (lowbit.save) for later --model runs")
    parser.add_argument("--arch", default="vgg", choices=("vgg", "mlp"), help="reference model to train (default vgg)")
    parser.add_argument("--epochs", type=int, default=10, help="QAT epochs when training (default 10)")
    add_data(parser)
    add_seed(parser, "seed for training and for the device draws")
    add_threads(parser)
    add_progress(parser)
    parser.add_argument("--cells", type=_ints, default=[1, 2], help="cell bits to sweep (default 1,2)")
    parser.add_argument("--adc", type=_ints, default=[4, 5, 6, 8], help="ADC bits to sweep (default 4,5,6,8)")
    parser.add_argument("--variation", type=_floats, default=[0.0, 0.05, 0.10], help="conductance variation (default 0,0.05,0.1)")
    parser.add_argument("--trials", type=int, default=1, help="device seeds averaged per variation > 0 (default 1)")
    parser.add_argument("--rows", type=int, default=128, help="rows per sub-array (default 128)")
    parser.add_argument("--adc-range", default="dynamic", choices=("dynamic", "full_scale"))
    parser.add_argument("--signed", default="dummy", choices=("dummy", "differential"))
    parser.add_argument("--on-off", type=float, default=math.inf, help="on/off conductance ratio (default inf)")
    parser.add_argument("--preset", default="neurosim", choices=("neurosim", "torchinference_rram"),
                        help="crossbar model: neurosim (two ADCs, lowbit's default) or torchinference_rram (one ADC on the "
                             "difference, the original's transfer, per-tap mapping, first conv and FC digital)")  # fmt: skip
    parser.add_argument("--digital", default="features.0,classifier",
                        help="comma-separated layer patterns kept digital (default: first layer and classifier)")  # fmt: skip
    parser.add_argument("--train-aware", action="store_true",
                        help="also fine-tune the model with the crossbar's noise in the forward pass (noise_aware: the last "
                             "--cells, the last --adc, the largest --variation) and sweep it beside the plain one")  # fmt: skip
    parser.add_argument("--aware-epochs", type=int, default=15, help="hardware-aware fine-tuning epochs (default 15)")
    parser.add_argument("--aware-lr", type=float, default=1e-3, help="hardware-aware fine-tuning learning rate (default 1e-3)")
    add_out(parser, "reports/cim", "folder for the table and plot")
    add_no_plots(parser)


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """The reader of ``--data`` and matplotlib unless ``--no-plots``."""
    return data_packages(args.data) + (() if args.no_plots else ("matplotlib",))


def use_dorefa(model: nn.Module) -> nn.Module:
    """Give every ``dorefa<k>`` weight the DoReFa quantizer (tanh normalisation), in place."""
    from lowbit.formats import DoReFaCodebook
    from lowbit.quantizers import DoReFaQuantizer, build_quantizer
    from lowbit.nn.layers import QuantLayer

    for m in model.modules():
        q = getattr(m, "weight_quant", None) if isinstance(m, QuantLayer) else None
        # The config path (and lowbit.load) builds a plain codebook quantizer; DoReFa's tanh needs its own class.
        if q is not None and isinstance(q.fmt, DoReFaCodebook) and not isinstance(q, DoReFaQuantizer):
            m.weight_quant = build_quantizer(q.spec)
    return model


def qat_model(arch: str, epochs: int, seed: int, data: Any = None) -> nn.Module:
    """Train a W4A4 DoReFa-weight / PACT-activation model on ``data`` (a Dataset; default digits), seeded."""
    import lowbit
    from lowbit.data import get_dataset, loader
    from lowbit.models import build_model
    from lowbit.nn.act import PACT
    from lowbit.train import fit, seed_everything

    seed_everything(seed)
    ds = data if data is not None else get_dataset("digits")
    kw = {"widths": (16, 32)} if arch == "vgg" else {}
    model = use_dorefa(lowbit.prepare_qat(build_model(arch, ds.input_shape, ds.num_classes, seed=seed, **kw), QAT_CONFIG))
    for m in model.modules():
        if isinstance(m, PACT):
            m.alpha.data.fill_(PACT_ALPHA_INIT)  # post-BN activations are ~N(0, 1): 10 (the paper's) wastes steps
    fit(model, loader(ds.train, 64, shuffle=True, seed=seed), epochs=epochs, lr=3e-3, pact_lambda=1e-4, desc=f"qat {arch}")
    return model.eval()


def aware_model(model: nn.Module, cfg: Any, epochs: int, seed: int, data: Any = None, *, digital: tuple[str, ...] = (),
                lr: float = 1e-3, noise: str = "cells") -> nn.Module:  # fmt: skip
    """Fine-tune a copy of ``model`` with ``noise_aware(model, cfg)`` (per-step redrawn device noise, ADC with STE), seeded."""
    from lowbit.data import get_dataset, loader
    from lowbit.targets.cim import noise_aware
    from lowbit.train import fit, seed_everything

    seed_everything(seed)
    ds = data if data is not None else get_dataset("digits")
    aware = noise_aware(use_dorefa(model), cfg, digital=digital, noise=noise).train()
    fit(aware, loader(ds.train, 64, shuffle=True, seed=seed), epochs=epochs, lr=lr, pact_lambda=1e-4, desc="hardware-aware")
    return aware.eval()


def aware_config(args: argparse.Namespace) -> Any:
    """The crossbar ``--train-aware`` trains for: the last --cells and --adc, the largest --variation."""
    from lowbit.targets.cim import CrossbarConfig

    return CrossbarConfig.preset(args.preset, cell_bits=args.cells[-1], rows=args.rows, adc_bits=args.adc[-1],
                                 adc_range=args.adc_range, signed=args.signed, on_off_ratio=args.on_off,
                                 variation=max(args.variation))  # fmt: skip


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def sweep(model: nn.Module, args: argparse.Namespace, data: Any = None) -> tuple[float, dict[tuple[int, int, float], float]]:
    """Software accuracy and the crossbar accuracy per (cell bits, ADC bits, variation) on ``data``'s test split."""
    from lowbit.data import get_dataset
    from lowbit.targets.cim import CrossbarConfig, simulate

    x, y = (data if data is not None else get_dataset("digits")).test.tensors
    digital = [p for p in args.digital.split(",") if p.strip()]
    soft = _accuracy(model, x, y)
    table: dict[tuple[int, int, float], float] = {}
    for cell in args.cells:
        for bits in args.adc:
            for var in args.variation:
                trials = args.trials if var > 0 else 1
                accs = []
                for t in range(trials):
                    cfg = CrossbarConfig.preset(getattr(args, "preset", "neurosim"), cell_bits=cell, rows=args.rows,
                                                adc_bits=bits, adc_range=args.adc_range, signed=args.signed,
                                                on_off_ratio=args.on_off, variation=var, seed=args.seed + t)  # fmt: skip
                    accs.append(_accuracy(simulate(model, cfg, digital=digital), x, y))
                table[(cell, bits, var)] = sum(accs) / len(accs)
    return soft, table


def cost_sweep(model: nn.Module, cells: list[int], adcs: list[int], example: torch.Tensor, digital: tuple[str, ...] = (),
               preset: str = "neurosim", **overrides: Any) -> str:  # fmt: skip
    """Energy / latency / area per inference over cell bits x ADC bits (lowbit.targets.cim.cost), as markdown."""
    from lowbit.targets.cim import CrossbarConfig, cost

    lines = ["| cell bits | ADC bits | energy nJ | ADC energy nJ | ADC share | latency µs | area mm² |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for cell in cells:
        for bits in adcs:
            cs = cost(model, CrossbarConfig.preset(preset, cell_bits=cell, adc_bits=bits, **overrides), example=example, digital=digital)
            e, a = sum(c.energy for c in cs), sum(c.e_adc for c in cs)
            lines.append(f"| {cell} | {bits} | {e * 1e9:.2f} | {a * 1e9:.2f} | {a / e if e else 0.0:.0%} | "
                         f"{sum(c.latency for c in cs) * 1e6:.2f} | {sum(c.area for c in cs) * 1e-6:.4f} |")  # fmt: skip
    return "\n".join(lines)


def markdown(soft: float, table: dict[tuple[int, int, float], float], variations: list[float]) -> str:
    """The accuracy table in markdown (rows: cell x ADC; columns: variation)."""
    head = "| cell bits | ADC bits | " + " | ".join(f"σ={v:.0%}" for v in variations) + " |"
    lines = [head, "|" + "---|" * (2 + len(variations)), f"| software (fake-quant) | — | " + " | ".join(f"{soft:.2f}" for _ in variations) + " |"]
    for cell, bits in dict.fromkeys((c, b) for c, b, _ in table):
        lines.append(f"| {cell} | {bits} | " + " | ".join(f"{table[(cell, bits, v)]:.2f}" for v in variations) + " |")
    return "\n".join(lines)


def plot(soft: float, table: dict[tuple[int, int, float], float], path: Path, title: str = "W4A4 model") -> None:
    """Accuracy vs ADC bits, one line per cell size and variation (matplotlib Agg), written atomically."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, cell in enumerate(dict.fromkeys(c for c, _, _ in table)):
        for var, style in zip(dict.fromkeys(v for _, _, v in table), ("-", "--", ":", "-.")):
            bits = [b for c, b, v in table if c == cell and v == var]
            ax.plot(bits, [table[(cell, b, var)] for b in bits], style, color=f"C{i}", marker="o",
                    label=f"{cell}-bit cell, σ={var:.0%}")  # fmt: skip
    ax.set_xticks(sorted({b for _, b, _ in table}))
    ax.axhline(soft, color="k", lw=0.8, ls="--", label=f"software ({soft:.2f} %)")
    ax.set(xlabel="ADC bits", ylabel="test accuracy (%)", title=f"{title} on simulated RRAM crossbars")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="cell bits, conductance variation", title_fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    """Train or load the model, sweep the crossbar settings, print the table, write it, then the plot."""
    import lowbit
    from lowbit.data import get_dataset
    from lowbit.targets.cim import CrossbarConfig
    from lowbit.train import seed_everything

    setup(args)
    if args.trials < 1 or args.epochs < 1 or args.aware_epochs < 1:
        raise ValueError("--trials, --epochs and --aware-epochs must be >= 1")
    if not args.aware_lr > 0:
        raise ValueError(f"--aware-lr must be > 0, got {args.aware_lr}")
    for cell in args.cells:  # bad settings fail now, not after training
        for bits in args.adc:
            for var in args.variation:
                CrossbarConfig.preset(args.preset, cell_bits=cell, rows=args.rows, adc_bits=bits, on_off_ratio=args.on_off,
                                      variation=var, signed=args.signed)  # fmt: skip
    t0 = time.perf_counter()
    if args.model:
        model, meta, ds = load_model(args.model, args.data)
        model = use_dorefa(model).eval()
        arch = (model_arch(meta) or {}).get("name", "model")
    else:
        ds = get_dataset(args.data)
        model = qat_model(args.arch, args.epochs, args.seed, ds)
        arch = args.arch
        if args.save:
            lowbit.save(model, args.save, metadata={"lowbit.data": args.data, "lowbit.seed": str(args.seed)})
    t1 = time.perf_counter()
    seed_everything(args.seed)
    soft, table = sweep(model, args, ds)
    text = markdown(soft, table, args.variation)
    if args.train_aware:
        cfg = aware_config(args)
        digital = tuple(p for p in args.digital.split(",") if p.strip())
        aware = aware_model(model, cfg, args.aware_epochs, args.seed, ds, digital=digital, lr=args.aware_lr)
        seed_everything(args.seed)
        a_soft, a_table = sweep(aware, args, ds)
        text += (f"\n\nhardware-aware ({args.aware_epochs} epochs, {cfg.cell_bits}-bit cells, {cfg.adc_bits}-bit ADC, "
                 f"σ={cfg.variation:.0%} in training):\n\n" + markdown(a_soft, a_table, args.variation))  # fmt: skip
    from lowbit.targets.cim import cost, cost_table

    digital = tuple(p for p in args.digital.split(",") if p.strip())
    x_one = ds.test.tensors[0][:1]
    over = {"rows": args.rows, "adc_range": args.adc_range, "signed": args.signed, "on_off_ratio": args.on_off}
    text += ("\n\nCost per inference (lowbit.targets.cim.cost; parameters and their sources in its docstring), "
             f"{args.cells[-1]}-bit cells, {args.adc[-1]}-bit ADC, per layer:\n\n"
             + cost_table(cost(model, CrossbarConfig.preset(args.preset, cell_bits=args.cells[-1], adc_bits=args.adc[-1], **over),
                               example=x_one, digital=digital))
             + "\n\nover the sweep:\n\n" + cost_sweep(model, args.cells, args.adc, x_one, digital, args.preset, **over))  # fmt: skip
    print(text)
    out = Path(args.out)
    write_text(out / "cim_table.md", text + "\n")
    if not args.no_plots:
        plot(soft, table, out / "cim_accuracy.png", f"W4A4 {arch} ({ds.name}, seed {args.seed})")
    print(f"\ntrain/load {t1 - t0:.1f} s, sweep {time.perf_counter() - t1:.1f} s; table and plot in {out}/")
    return 0
