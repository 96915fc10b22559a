"""Crossbar accuracy over time after programming: PCM drift with and without global compensation, RRAM retention, faults.

    python benchmarks/bench_cim_time.py [--seed 0] [--device-seeds 0,1,2] [--out reports/cim] [--no-plots]

The W4A4 digits VGG of ``lowbit cim`` (``--epochs`` of QAT, seed ``--seed``) is read out on
crossbars (``--cells``-bit cells, ``--adc``-bit ADC, first conv and classifier digital) at
1 s (= t0, the programming reference), 1 hour, 1 day, 1 month and 1 year:

- PCM drift ``nu = 0.05 ± 0.02`` (aihwkit's PCM-like spread), differential pairs, without and
  with global drift compensation; the reference-column (``signed="dummy"``) scheme with
  compensation as one more column (its reference column drifts apart from the weight column,
  which one scalar per layer cannot undo);
- RRAM retention ``(relax, sigma) = (0.02, 0.01)`` per decade with compensation, and stuck-at
  faults appearing at 0.1 % of cells per decade (differential pairs).

``--aware-sigma 0.3`` fine-tunes the model first with ``noise_aware`` at that variation
(drift's per-device spread after compensation is about ``0.02 ln(t/t0)``: 0.30 at a month).

Each figure is the mean over the ``--device-seeds`` chips (drift exponents, retention and
fault draws). Prints a markdown table, writes it to ``--out``/cim_time_table.md and, unless
``--no-plots``, the plot cim_time_accuracy.png next to it.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from lowbit.commands.cim import aware_model, qat_model
from lowbit.data import get_dataset
from lowbit.fileio import write_text
from lowbit.targets.cim import CrossbarConfig, simulate

DIGITAL = ("features.0", "classifier")
TIMES = {"1 s (t0)": 1.0, "1 hour": 3600.0, "1 day": 86400.0, "1 month": 30 * 86400.0, "1 year": 365 * 86400.0}
NU = (0.05, 0.02)


def scenarios(cells: int, adc: int) -> dict[str, dict[str, object]]:
    """The crossbar settings compared, by column label (time is added per row)."""
    base = {"cell_bits": cells, "adc_bits": adc}
    return {
        "PCM drift, differential": {**base, "signed": "differential", "drift_nu": NU},
        "PCM drift, differential, compensated": {**base, "signed": "differential", "drift_nu": NU, "drift_compensation": True},
        "PCM drift, reference column, compensated": {**base, "signed": "dummy", "drift_nu": NU, "drift_compensation": True},
        "RRAM retention (0.02, 0.01)/decade, compensated": {**base, "signed": "differential", "retention": (0.02, 0.01),
                                                            "drift_compensation": True},
        "stuck-at faults 0.1 %/decade": {**base, "signed": "differential", "fault_rate": 0.001},
    }  # fmt: skip


def time_table(seed: int, device_seeds: list[int], epochs: int, cells: int, adc: int, aware_sigma: float = 0.0,
               only: tuple[int, ...] = ()) -> tuple[str, dict[str, list[float]], float]:  # fmt: skip
    """Accuracy per scenario and time (mean over chips) as markdown, the raw means, and the software accuracy."""
    ds = get_dataset("digits")
    x, y = ds.test.tensors
    model = qat_model("vgg", epochs, seed, ds)
    if aware_sigma:
        # Drift's per-device spread after compensation acts like multiplicative variation of about
        # nu_std * ln(t/t0) (0.30 at a month): train for it with noise_aware, as aihwkit trains for PCM noise.
        model = aware_model(model, CrossbarConfig(cell_bits=cells, adc_bits=adc, signed="differential", variation=aware_sigma),
                            15, seed, ds, digital=DIGITAL)  # fmt: skip

    def acc(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((m(x).argmax(1) == y).float().mean())

    soft = acc(model)
    curves: dict[str, list[float]] = {}
    for i, (label, kw) in enumerate(scenarios(cells, adc).items()):
        if only and i not in only:
            continue
        curves[label] = [statistics.mean(acc(simulate(model, CrossbarConfig(**kw, t_seconds=t, seed=d), digital=DIGITAL))  # type: ignore[arg-type]
                                         for d in device_seeds) for t in TIMES.values()]  # fmt: skip
    head = "| time after programming | " + " | ".join(curves) + " |"
    trained = f", fine-tuned 15 epochs noise-aware at σ={aware_sigma:.0%}" if aware_sigma else ""
    lines = [f"digits W4A4 VGG, seed {seed}{trained}, software {soft:.2f} %, {cells}-bit cells, {adc}-bit ADC, no variation, "
             f"PCM ν = {NU[0]} ± {NU[1]}, mean of device seeds {','.join(map(str, device_seeds))} ({len(y)} test images)",
             "", head, "|---|" + "---:|" * len(curves)]  # fmt: skip
    for i, name in enumerate(TIMES):
        lines.append(f"| {name} | " + " | ".join(f"{v[i]:.2f}" for v in curves.values()) + " |")
    lines.append("| Δ at 1 year vs t0 (pt) | " + " | ".join(f"{v[-1] - v[0]:+.2f}" for v in curves.values()) + " |")
    return "\n".join(lines), curves, soft


def plot(curves: dict[str, list[float]], soft: float, path: Path) -> None:
    """Accuracy vs time after programming (log time axis), one line per scenario."""
    from lowbit.commands._common import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, vals) in enumerate(curves.items()):
        ax.plot(list(TIMES.values()), vals, marker="o", color=f"C{i}", label=label)
    ax.axhline(soft, color="k", lw=0.8, ls="--", label=f"software ({soft:.2f} %)")
    ax.set_xscale("log")
    ax.set_xticks(list(TIMES.values()), list(TIMES), fontsize=7)
    ax.set(xlabel="time after programming", ylabel="test accuracy (%)", title="W4A4 VGG (digits) on aging crossbars")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    """Train, simulate at each time, print and write the table and the plot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cells", type=int, default=1, help="cell bits (default 1)")
    ap.add_argument("--adc", type=int, default=6, help="ADC bits (default 6)")
    ap.add_argument("--aware-sigma", type=float, default=0.0,
                    help="fine-tune noise-aware (differential pairs) at this variation first (default 0: the plain model)")
    ap.add_argument("--only", default="", help="comma-separated scenario indices to run (default all)")
    ap.add_argument("--out", default="reports/cim")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.device_seeds.split(",") if s.strip()]
    only = tuple(int(i) for i in args.only.split(",") if i.strip())
    text, curves, soft = time_table(args.seed, seeds, args.epochs, args.cells, args.adc, args.aware_sigma, only)
    print(text)
    out = Path(args.out)
    write_text(out / "cim_time_table.md", text + "\n")
    if not args.no_plots:
        plot(curves, soft, out / "cim_time_accuracy.png")


if __name__ == "__main__":
    main()
