"""SNN benchmark: training step time of quantized vs float recurrent SNNs, and the full ablation table.

    python benchmarks/bench_snn.py                 # step times + ablation (the README numbers)
    python benchmarks/bench_snn.py --timing-only   # step times only
    python benchmarks/bench_snn.py --threads 2 --seed 0

Step times: the same recurrent SNN (Randman-sized: 50 inputs, 128 hidden, 30 steps,
batch 128) trained with float weights and states, fixed-point weights (quantized
once per forward pass), quantized states (threshold-centred or uniform levels,
rounded through an exact look-up table: one gather and a few elementwise passes
per time step), and both.
Variants run interleaved and the minimum over rounds is kept, so background load
on a shared machine biases all of them alike. The DESIGN.md aim is <= 1.3x float.

(The comparison against snnTorch + Brevitas, which needs its own virtual
environment, is not part of this script yet.)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lowbit.snn import SNN, state_quantizer  # noqa: E402
from lowbit.snn.ablation import AblationConfig, format_table, run_ablation, save_report  # noqa: E402


def step_times(rounds: int = 15, steps: int = 30, hidden: int = 128, batch: int = 128, seed: int = 0) -> dict[str, float]:
    """Seconds per training step (min over interleaved rounds) for float and quantized variants."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, steps, 50, generator=g) < 0.02).float()
    y = torch.randint(0, 10, (batch,), generator=g)
    variants = {
        "float": lambda m: m,
        "w4 (fxp4, per population)": lambda m: m.quantize_weights("fxp4:p99"),
        "s4 (thr states)": lambda m: m.set_state_quant(state_quantizer("thr", 4)),
        "s4 (uniform states)": lambda m: m.set_state_quant(state_quantizer("uniform", 4)),
        "s8 (thr states)": lambda m: m.set_state_quant(state_quantizer("thr", 8)),
        "w4 + s4": lambda m: m.quantize_weights("fxp4:p99").set_state_quant(state_quantizer("thr", 4)),
        "w8 + s8": lambda m: m.quantize_weights("fxp8:p99").set_state_quant(state_quantizer("thr", 8)),
    }
    models = {k: f(SNN(50, hidden, 10, seed=seed)) for k, f in variants.items()}
    opts = {k: torch.optim.Adam(m.parameters(), 1e-3) for k, m in models.items()}
    best = {k: float("inf") for k in models}
    for r in range(rounds + 2):
        for k, m in models.items():
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            if r >= 2:  # warm-up rounds are not counted
                best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> int:
    """Run the benchmark and print (and save) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--report-dir", default="reports/snn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t = step_times(args.rounds, seed=args.seed)
    f = t["float"]
    lines = ["| variant | step (ms) | vs float |", "|---|---|---|"]
    lines += [f"| {k} | {1000 * v:.1f} | {v / f:.2f}x |" for k, v in t.items()]
    timing = "\n".join(lines)
    print(timing)
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"step_s": t, "threads": args.threads}
    if not args.timing_only:
        res = run_ablation(AblationConfig(seed=args.seed), log=lambda s: print(s, flush=True))
        table = format_table(res)
        print()
        print(table)
        print(f"\nablation wall time: {res['wall_s']:.1f} s")
        save_report(res, out)
        result["ablation_wall_s"] = res["wall_s"]
    (out / "bench_snn.json").write_text(json.dumps(result, indent=1))
    (out / "bench_snn_timing.md").write_text(timing + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
