"""SNN benchmark: training step time of quantized vs float recurrent SNNs, and the full ablation table.

    python benchmarks/bench_snn.py                 # step times + ablation (the README numbers)
    python benchmarks/bench_snn.py --timing-only   # step times only
    python benchmarks/bench_snn.py --threads 2 --seed 0
    python benchmarks/bench_snn.py --only profiles --seeds 0 1   # float / 8-bit QAT / Loihi 2 / Xylo

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


# --------------------------------------------------------------------------- chip profiles (issue 18)


def profile_rows(seed: int, log=print) -> dict[str, object]:
    """Float vs 8-bit QAT vs the Loihi 2 and Xylo profiles on the ``lowbit snn`` task, plus the integer simulator check."""
    import copy
    import dataclasses

    import numpy as np

    from lowbit.data.spiking import randman_raster, split
    from lowbit.snn import evaluate, train
    from lowbit.snn.intsim import compile_int, simulate
    from lowbit.snn.profiles import PROFILES, apply_profile

    cfg = AblationConfig(seed=seed)  # the lowbit snn task and its training settings
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    x, y = randman_raster(cfg.nb_classes, cfg.nb_units, cfg.nb_steps, 1.0, cfg.dim_manifold, 1, cfg.nb_samples,
                          cfg.alpha, True, seed)
    xtr, ytr, xte, yte = split(x, y, 0.2, seed=seed)
    fp = SNN(cfg.nb_units, cfg.hidden, cfg.nb_classes, recurrent=cfg.recurrent, beta=cfg.beta, seed=seed)
    train(fp, xtr, ytr, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)
    rows = {"float": evaluate(fp, xte, yte)}
    log(f"seed {seed} float: {100 * rows['float']:.2f} %  ({time.perf_counter() - t0:.0f} s)")

    def finetune(m: SNN) -> float:
        train(m, xtr, ytr, epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, seed=seed + 1)
        return evaluate(m, xte, yte)

    rows["float fine-tuned"] = finetune(copy.deepcopy(fp))
    rows["QAT 8-bit (fxp8:p99, per population)"] = finetune(copy.deepcopy(fp).quantize_weights("fxp8:p99"))
    log(f"seed {seed} QAT 8-bit: {100 * rows['QAT 8-bit (fxp8:p99, per population)']:.2f} %  "
        f"({time.perf_counter() - t0:.0f} s)")
    agree: dict[str, dict[str, float]] = {}

    def profiled(label: str, m: SNN) -> None:
        rows[f"{label} PTQ"] = evaluate(m, xte, yte)
        rows[f"{label} QAT"] = finetune(m)
        with torch.no_grad():
            r = m.run(xte, record=True)
        s = simulate(compile_int(m), xte)
        same = all(np.array_equal(a.numpy().astype(np.int64), b) for a, b in zip(r["spikes"], s["spikes"]))
        agree[label] = {"spikes_identical": float(same), "spike_rate": float(r["spikes"][0].mean()),
                        "intsim_acc": float((torch.as_tensor(s["pred"]) == yte).float().mean())}
        log(f"seed {seed} {label}: PTQ {100 * rows[f'{label} PTQ']:.2f} %, QAT {100 * rows[f'{label} QAT']:.2f} %, "
            f"integer simulator spikes identical: {same}  ({time.perf_counter() - t0:.0f} s)")

    for name in ("loihi2", "xylo"):
        profiled(name, apply_profile(copy.deepcopy(fp), name))
    # Loihi 2's standard (Lava CUBA) neuron resets to zero; the float network resets by subtraction, and
    # fine-tuning does not bridge that: (a) train the float network with the chip's reset from the start,
    # (b) Loihi 2's arithmetic with a subtractive reset (a custom microcode neuron model on Loihi 2)
    fz = SNN(cfg.nb_units, cfg.hidden, cfg.nb_classes, recurrent=cfg.recurrent, beta=cfg.beta, reset="zero", seed=seed)
    train(fz, xtr, ytr, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)
    rows["float, reset to zero"] = evaluate(fz, xte, yte)
    profiled("loihi2 (float trained with reset to zero)", apply_profile(copy.deepcopy(fz), "loihi2"))
    sub = dataclasses.replace(PROFILES["loihi2"], name="loihi2-subtract", reset="subtract")
    profiled("loihi2 arithmetic, subtractive reset", apply_profile(copy.deepcopy(fp), sub))
    return {"seed": seed, "acc": rows, "intsim": agree, "wall_s": time.perf_counter() - t0}


def profile_table(results: list[dict[str, object]]) -> str:
    """Mean over seeds (and each seed) as a markdown table, in percent."""
    names = list(results[0]["acc"])  # type: ignore[arg-type]
    seeds = [r["seed"] for r in results]
    lines = ["| network | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---|" + "---|" * (len(seeds) + 1)]
    for n in names:
        v = [100 * r["acc"][n] for r in results]  # type: ignore[index]
        lines.append(f"| {n} | " + " | ".join(f"{a:.2f}" for a in v) + f" | {sum(v) / len(v):.2f} |")
    for chip in results[0]["intsim"]:  # type: ignore[union-attr]
        ok = all(r["intsim"][chip]["spikes_identical"] == 1.0 for r in results)  # type: ignore[index]
        lines.append(f"| {chip}: integer simulator spikes == fake-quant spikes (test set, every neuron and step) | "
                     + " | ".join("yes" if r["intsim"][chip]["spikes_identical"] else "NO" for r in results)  # type: ignore[index]
                     + f" | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)


def main() -> int:
    """Run the benchmark and print (and save) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--report-dir", default="reports/snn")
    ap.add_argument("--only", choices=["profiles"], default=None, help="profiles: float / 8-bit QAT / Loihi 2 / Xylo only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of --only profiles (default 0 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.only == "profiles":
        from lowbit.fileio import write_text

        res = [profile_rows(s, log=lambda m: print(m, flush=True)) for s in args.seeds]
        table = profile_table(res)
        print()
        print(table)
        out = Path(args.report_dir)
        write_text(out / "profiles.md", table + "\n")
        write_text(out / "profiles.json", json.dumps(res, indent=1) + "\n")
        print(f"report: {out / 'profiles.md'}, {out / 'profiles.json'}")
        return 0
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
