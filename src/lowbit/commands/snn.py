"""``lowbit snn``: the spiking-network quantization ablation on Randman (FP32 / PTQ / QAT / SQUAT)."""
from __future__ import annotations

import argparse
import time

import torch

HELP = "train a recurrent SNN on Randman and print the FP32/PTQ/QAT/stateful-QAT ablation at 8/4/2 bits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lowbit snn``."""
    parser.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and shuffling (default 0)")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2], help="bit widths for weights and states")
    parser.add_argument("--epochs", type=int, default=12, help="float training epochs (default 12)")
    parser.add_argument("--qat-epochs", type=int, default=4, help="fine-tuning epochs of each QAT variant (default 4)")
    parser.add_argument("--hidden", type=int, default=128, help="recurrent hidden neurons (default 128)")
    parser.add_argument("--units", type=int, default=50, help="Randman input units (default 50)")
    parser.add_argument("--steps", type=int, default=30, help="Randman time steps (default 30)")
    parser.add_argument("--samples", type=int, default=500, help="Randman samples per class (default 500)")
    parser.add_argument("--classes", type=int, default=10, help="Randman classes (default 10)")
    parser.add_argument("--dim", type=int, default=2, help="Randman manifold dimension (default 2)")
    parser.add_argument("--alpha", type=float, default=2.0, help="Randman smoothness alpha (default 2)")
    parser.add_argument("--scope", choices=["population", "connection"], default="population",
                        help="one weight scale per population (default) or per connection")
    parser.add_argument("--state-range", choices=["calibrated", "fixed"], default="calibrated",
                        help="state level range from the float membrane distribution, or snnTorch's [-thr, 1.2 thr]")
    parser.add_argument("--state-pct", type=float, nargs=2, default=[2.0, 98.0], metavar=("LO", "HI"),
                        help="percentiles of the float membrane distribution that bound calibrated states (default 2 98)")
    parser.add_argument("--thr-multiplier", nargs="*", default=["4=0.7"], metavar="BITS=M",
                        help="gap ratio of threshold-centred levels per bit width (default 4=0.7; others: snnTorch's)")
    parser.add_argument("--report-dir", default="reports/snn", help="folder for the table and plot (default reports/snn)")
    parser.add_argument("--no-plot", action="store_true", help="skip the state-level plot")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--trainer", choices=["bptt", "eventprop"], default="bptt",
                        help="bptt: surrogate-gradient BPTT ablation (FP/PTQ/QAT/SQUAT); "
                             "eventprop: exact EventProp gradients, weights only (default bptt)")
    parser.add_argument("--readout", choices=["exp", "mean", "sum", "max", "last", "ttfs"], default="exp",
                        help="EventProp output readout (default exp: exponentially weighted mean; ttfs: first spike time)")


def run(args: argparse.Namespace) -> int:
    """Run the ablation, print the table, write the report."""
    from ..snn.ablation import AblationConfig, format_table, run_ablation, save_report

    try:
        mult = {int(b): float(m) for b, m in (item.split("=") for item in args.thr_multiplier)}
    except ValueError:
        raise ValueError(f"--thr-multiplier takes BITS=M pairs, got {args.thr_multiplier}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trainer == "eventprop":
        from ..snn.eventprop_train import eventprop_ablation

        res = eventprop_ablation(seed=args.seed, bits=tuple(args.bits), epochs=args.epochs, qat_epochs=args.qat_epochs,
                                 hidden=args.hidden, nb_units=args.units, nb_steps=args.steps, nb_samples=args.samples,
                                 nb_classes=args.classes, dim_manifold=args.dim, alpha=args.alpha, scope=args.scope,
                                 readout=args.readout, log=lambda s: print(s, flush=True))
        print(res["table"])
        return 0
    cfg = AblationConfig(seed=args.seed, bits=tuple(args.bits), epochs=args.epochs, qat_epochs=args.qat_epochs,
                         hidden=args.hidden, nb_units=args.units, nb_steps=args.steps, nb_samples=args.samples,
                         nb_classes=args.classes, dim_manifold=args.dim, alpha=args.alpha, scope=args.scope,
                         state_range=args.state_range, state_pct=tuple(args.state_pct), thr_multiplier=mult)
    t0 = time.perf_counter()
    res = run_ablation(cfg, log=lambda s: print(s, flush=True), progress=args.progress)
    print()
    print(format_table(res))
    sr = res["state_range"]
    print(f"\nstate range ({cfg.state_range}): [{-sr['threshold'] * (1 + sr['lower_limit']):.3f}, "
          f"{sr['threshold'] * (1 + sr['upper_limit']):.3f}] (threshold {sr['threshold']:g})")
    steps = res["step_s"]
    f = steps.get("float", 0.0)
    if f:
        print("training step time vs float: " + ", ".join(f"{k} {v / f:.2f}x" for k, v in steps.items() if k != "float"))
    files = save_report(res, args.report_dir, plot=not args.no_plot)
    print(f"report: {', '.join(str(p) for p in files.values())}")
    print(f"wall time: {time.perf_counter() - t0:.1f} s")
    return 0
