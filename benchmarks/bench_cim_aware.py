"""Hardware-aware training on crossbars: the W4A4 digits VGG of ``lowbit cim``, software vs plain vs noise-aware.

    python benchmarks/bench_cim_aware.py [--seed 0] [--device-seeds 100,101,102] [--epochs 10] [--aware-epochs 15]

The model is trained as ``lowbit cim`` trains it (``--epochs`` of QAT), then fine-tuned
``--aware-epochs`` more with ``noise_aware(model, cfg)`` (per-cell conductance noise of the
simulator's σ redrawn every step, an ADC with a straight-through gradient). A control
fine-tunes the same epochs without noise, so the gain is the noise's, not the extra epochs'.
Each model is read out by ``simulate`` on 2-bit cells, 10 % variation, an 8-bit ADC (first
conv and classifier digital), over the ``--device-seeds`` chips: test-time variation seeds
differ from the training noise (drawn from torch's global generator seeded with ``--seed``).
``--noise weight`` trains with the older proxy (the weight times ``1 + σN``) instead.
Prints a markdown table (accuracy %, mean ± std over the chips).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from lowbit.commands.cim import aware_model, qat_model
from lowbit.data import get_dataset
from lowbit.targets.cim import CrossbarConfig, simulate

DIGITAL = ("features.0", "classifier")


def _acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def recovery_table(seed: int, device_seeds: list[int], epochs: int, aware_epochs: int, *, cell_bits: int = 2,
                   variation: float = 0.1, adc_bits: int = 8, noise: str = "cells", lr: float = 1e-3) -> str:  # fmt: skip
    """Software, plain, fine-tuned-without-noise and noise-aware accuracy on simulated chips, as markdown."""
    ds = get_dataset("digits")
    x, y = ds.test.tensors
    base = qat_model("vgg", epochs, seed, ds)
    cfg = CrossbarConfig(cell_bits=cell_bits, adc_bits=adc_bits, variation=variation)
    clean = CrossbarConfig(cell_bits=cell_bits, adc_bits=adc_bits, variation=0.0)
    control = aware_model(base, clean, aware_epochs, seed, ds, digital=DIGITAL, lr=lr)  # no noise, same epochs
    aware = aware_model(base, cfg, aware_epochs, seed, ds, digital=DIGITAL, lr=lr, noise=noise)
    soft = _acc(base, x, y)
    rows = [("software (fake-quant)", base, False), (f"plain ({epochs} QAT epochs)", base, True),
            (f"+{aware_epochs} epochs without noise", control, True), (f"+{aware_epochs} epochs noise-aware ({noise})", aware, True)]  # fmt: skip
    lines = [f"digits W4A4 VGG, seed {seed}, {cell_bits}-bit cells, σ={variation:.0%}, {adc_bits}-bit ADC, "
             f"device seeds {','.join(map(str, device_seeds))}, {len(y)} test images", "",
             "| model | software % | crossbar % (mean ± std) | Δ to software baseline pt |", "|---|---:|---:|---:|"]  # fmt: skip
    for label, m, sim in rows:
        s = _acc(m, x, y)
        if not sim:
            lines.append(f"| {label} | {s:.2f} | — | — |")
            continue
        accs = [_acc(simulate(m, dataclasses.replace(cfg, seed=d), digital=DIGITAL), x, y) for d in device_seeds]
        mean, std = statistics.mean(accs), statistics.pstdev(accs)
        lines.append(f"| {label} | {s:.2f} | {mean:.2f} ± {std:.2f} ({', '.join(f'{a:.2f}' for a in accs)}) | {mean - soft:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    """Train, fine-tune and simulate; print the recovery table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    ap.add_argument("--device-seeds", default="100,101,102", help="chips (variation draws) at test time")
    ap.add_argument("--epochs", type=int, default=10, help="QAT epochs (default 10, as lowbit cim)")
    ap.add_argument("--aware-epochs", type=int, default=15, help="fine-tuning epochs (default 15)")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    ap.add_argument("--noise", default="cells", choices=("cells", "weight"), help="training noise model (default cells)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.device_seeds.split(",") if s.strip()]
    print(recovery_table(args.seed, seeds, args.epochs, args.aware_epochs, noise=args.noise, lr=args.lr))


if __name__ == "__main__":
    main()
