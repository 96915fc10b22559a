"""``lowbit snn``: the spiking-network quantization ablation on Randman (FP32 / PTQ / QAT / SQUAT)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ._common import add_no_plots, add_out, add_seed, add_threads, renamed, setup

HELP = "train a recurrent SNN on Randman and print the FP32/PTQ/QAT/stateful-QAT ablation at 8/4/2 bits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lowbit snn``."""
    add_seed(parser, "seed for data, initialisation and shuffling")
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
    parser.add_argument("--state-range", choices=["calibrated", "learned", "fixed"], default="calibrated",
                        help="state level range from the float membrane distribution (calibrated), that range with "
                             "its ends then trained by LSQ in the fine-tuned variants (learned), or snnTorch's "
                             "[-thr, 1.2 thr] (fixed)")
    parser.add_argument("--state-lr", type=float, default=1e-2,
                        help="Adam learning rate of the learned state-range ends (default 0.01)")
    parser.add_argument("--state-pct", type=float, nargs=2, default=[2.0, 98.0], metavar=("LO", "HI"),
                        help="percentiles of the float membrane distribution that bound calibrated states (default 2 98)")
    parser.add_argument("--thr-multiplier", nargs="*", default=["4=0.7"], metavar="BITS=M",
                        help="gap ratio of threshold-centred levels per bit width (default 4=0.7; others: snnTorch's)")
    add_out(parser, "reports/snn", "folder for the table, JSON and plot")
    renamed(parser, "--report-dir", "--out", "out")
    add_no_plots(parser)
    add_threads(parser)
    # a bare --progress (the old on/off flag) still means bars
    parser.add_argument("--progress", nargs="?", const="bar", default="auto", choices=("auto", "bar", "lines", "none"),
                        help="progress display: bar, one line per epoch (lines), none; auto = bar on a terminal, "
                             "else lines (default: auto)")
    parser.add_argument("--trainer", choices=["bptt", "eventprop"], default="bptt",
                        help="bptt: surrogate-gradient BPTT ablation (FP/PTQ/QAT/SQUAT); "
                             "eventprop: exact EventProp gradients, weights only (default bptt)")
    parser.add_argument("--readout", choices=["exp", "mean", "sum", "max", "last", "ttfs"], default="exp",
                        help="EventProp output readout (default exp: exponentially weighted mean; ttfs: first spike time)")
    parser.add_argument("--profile", choices=["loihi2", "xylo"], default=None,
                        help="instead of the ablation: float, 8-bit QAT and this chip's integer profile (PTQ, QAT), "
                             "the integer simulator check, and the profiled network saved (BPTT only)")


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """matplotlib for the state-level plot (BPTT runs without ``--no-plots``)."""
    return () if args.no_plots or args.trainer == "eventprop" else ("matplotlib",)


def _eventprop(args: argparse.Namespace, out: Path) -> int:
    from ..fileio import write_text
    from ..snn.eventprop_train import eventprop_ablation

    t0 = time.perf_counter()
    res = eventprop_ablation(seed=args.seed, bits=tuple(args.bits), epochs=args.epochs, qat_epochs=args.qat_epochs,
                             hidden=args.hidden, nb_units=args.units, nb_steps=args.steps, nb_samples=args.samples,
                             nb_classes=args.classes, dim_manifold=args.dim, alpha=args.alpha, scope=args.scope,
                             readout=args.readout, log=lambda s: print(s, flush=True))
    print(res["table"])
    settings = {k: getattr(args, k) for k in ("seed", "bits", "epochs", "qat_epochs", "hidden", "units", "steps",
                                             "samples", "classes", "dim", "alpha", "scope", "readout")}
    write_text(out / "eventprop.md", f"# lowbit snn --trainer eventprop (Randman, seed {args.seed})\n\n{res['table']}\n")
    write_text(out / "eventprop.json", json.dumps({"settings": settings, "rows": res["rows"]}, indent=1, default=float) + "\n")
    print(f"report: {out / 'eventprop.md'}, {out / 'eventprop.json'}")
    print(f"wall time: {time.perf_counter() - t0:.1f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ablation, print the table, write the report (table and JSON first, then the plot)."""
    from ..snn.ablation import AblationConfig, format_table, plot_state_levels, run_ablation, save_report

    try:
        mult = {int(b): float(m) for b, m in (item.split("=") for item in args.thr_multiplier)}
    except ValueError:
        raise ValueError(f"--thr-multiplier takes BITS=M pairs, got {args.thr_multiplier}") from None
    setup(args)
    out = Path(args.out)
    if args.trainer == "eventprop":
        if args.profile:
            raise ValueError("--profile runs the BPTT network; it cannot be combined with --trainer eventprop")
        if any(b < 2 for b in args.bits):
            raise ValueError(f"--bits must be >= 2, got {args.bits}")
        return _eventprop(args, out)
    cfg = AblationConfig(seed=args.seed, bits=tuple(args.bits), epochs=args.epochs, qat_epochs=args.qat_epochs,
                         hidden=args.hidden, nb_units=args.units, nb_steps=args.steps, nb_samples=args.samples,
                         nb_classes=args.classes, dim_manifold=args.dim, alpha=args.alpha, scope=args.scope,
                         state_range=args.state_range, state_pct=tuple(args.state_pct), thr_multiplier=mult,
                         state_lr=args.state_lr)
    cfg.validate()  # bad settings fail before training
    if args.profile:  # a chip profile's rows instead of the ablation (lowbit.snn.profile_task)
        from ..snn.profile_task import run_profile_task

        res = run_profile_task(cfg, args.profile, out, log=lambda s: print(s, flush=True))
        return 0 if res["spikes_identical"] else 1  # the integer simulator must give the fake-quant spikes
    t0 = time.perf_counter()
    res = run_ablation(cfg, log=lambda s: print(s, flush=True), progress=False if args.progress == "none" else None)
    print()
    print(format_table(res))
    sr = res["state_range"]
    print(f"\nstate range ({cfg.state_range}): [{-sr['threshold'] * (1 + sr['lower_limit']):.3f}, "
          f"{sr['threshold'] * (1 + sr['upper_limit']):.3f}] (threshold {sr['threshold']:g})")
    for key, (lo, hi) in res.get("learned_ranges", {}).items():  # type: ignore[union-attr]
        print(f"learned state range {key}: [{lo:.3f}, {hi:.3f}]")
    steps = res["step_s"]
    f = steps.get("float", 0.0)
    if f:
        print("training step time vs float: " + ", ".join(f"{k} {v / f:.2f}x" for k, v in steps.items() if k != "float"))
    files = save_report(res, out, plot=False)
    if not args.no_plots:
        files["plot"] = plot_state_levels(res, out / "state_levels.png")
    print(f"report: {', '.join(str(p) for p in files.values())}")
    print(f"wall time: {time.perf_counter() - t0:.1f} s")
    return 0
