"""SNN benchmark: training step time of quantized vs float recurrent SNNs, and the full ablation table.

    python benchmarks/bench_snn.py                 # step times + ablation (the README numbers)
    python benchmarks/bench_snn.py --timing-only   # step times only
    python benchmarks/bench_snn.py --threads 2 --seed 0
    python benchmarks/bench_snn.py --only profiles --seeds 0 1 --threads 1   # float / 8-bit QAT / Loihi 2 / Xylo
    python benchmarks/bench_snn.py --only harder --seeds 0 1     # W4 + 4-bit states, calibrated vs learned ranges
    python benchmarks/bench_snn.py --only harder --task default  # the same rows on the lowbit snn task

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
import copy
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
    from lowbit.snn.profiles import PROFILES, apply_profile, profile_qat

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

    def finetune(m: SNN, epochs: int = cfg.qat_epochs) -> float:
        train(m, xtr, ytr, epochs=epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, seed=seed + 1)
        return evaluate(m, xte, yte)

    def recipe(m: SNN) -> float:  # the profile's QAT recipe (lowbit snn --profile runs the same)
        profile_qat(m, m.profile.profile, xtr, ytr, epochs=cfg.qat_epochs, lr=cfg.qat_lr, adapt_epochs=2 * cfg.qat_epochs,
                    adapt_lr=cfg.lr, batch_size=cfg.batch_size, seed=seed + 1)
        return evaluate(m, xte, yte)

    rows["float fine-tuned"] = finetune(copy.deepcopy(fp))
    rows["QAT 8-bit (fxp8:p99, per population)"] = finetune(copy.deepcopy(fp).quantize_weights("fxp8:p99"))
    log(f"seed {seed} QAT 8-bit: {100 * rows['QAT 8-bit (fxp8:p99, per population)']:.2f} %  "
        f"({time.perf_counter() - t0:.0f} s)")
    # the Loihi 2 recipe trains 3 x qat_epochs (2 x float reset adaptation + integer QAT): 8-bit QAT that long too
    rows["QAT 8-bit, 3x epochs (the Loihi 2 recipe's budget)"] = finetune(
        copy.deepcopy(fp).quantize_weights("fxp8:p99"), 3 * cfg.qat_epochs)
    agree: dict[str, dict[str, float]] = {}

    def profiled(label: str, m: SNN, qat=recipe) -> None:
        rows[f"{label} PTQ"] = evaluate(m, xte, yte)
        rows[f"{label} QAT"] = qat(m)
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
    # Loihi 2's standard (Lava CUBA) neuron resets to zero; the float network resets by subtraction. The recipe
    # adapts the reset in float first; without that step, integer QAT alone does not bridge it. Also:
    # (a) the float network trained with the chip's reset from the start, (b) Loihi 2's arithmetic with a
    # subtractive reset (a custom microcode neuron model on Loihi 2)
    m = apply_profile(copy.deepcopy(fp), "loihi2")
    rows["loihi2 QAT without the reset adaptation (integer QAT only)"] = finetune(m)
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


# --------------------------------------------------------------------------- state ranges on a harder task (issue 18)

TASKS = {
    # more classes, fewer input units, a higher-dimensional manifold than lowbit snn's default
    "harder": {"nb_classes": 16, "nb_units": 40, "dim_manifold": 5},
    "default": {},
    # a smoke check of the section and its --jobs plumbing, seconds (its accuracies mean nothing)
    "tiny": {"nb_classes": 3, "nb_units": 10, "nb_samples": 12, "hidden": 16, "nb_steps": 10, "epochs": 2, "qat_epochs": 1},
}
TASK_FLAGS = {"harder": "--classes 16 --units 40 --dim 5 ", "default": "",
              "tiny": "--classes 3 --units 10 --samples 12 --hidden 16 --steps 10 --epochs 2 --qat-epochs 1 "}


def state_range_rows(seed: int, task: str = "harder", log=print) -> dict[str, object]:
    """Float, W4 and W4 + 4-bit states (calibrated, learned and snnTorch's fixed range) on one seed of ``task``.

    Every row is the same code path as ``lowbit snn --bits 4`` (the QAT and QAT+SQUAT rows, one thread), so
    each equals that command's row for the same seed and ``--state-range``.
    """
    import dataclasses

    from lowbit.snn import evaluate, train
    from lowbit.snn.ablation import finetune_variant, train_float

    cfg = AblationConfig(seed=seed, bits=(4,), **TASKS[task])  # type: ignore[arg-type]
    t0 = time.perf_counter()
    t = train_float(cfg)
    xtr, ytr, xte, yte = t.data
    rows: dict[str, dict[str, object]] = {"float": {"acc": evaluate(t.fp, xte, yte)}}
    log(f"seed {seed} float: {100 * rows['float']['acc']:.2f} %  ({time.perf_counter() - t0:.0f} s)")  # type: ignore[operator]
    ft = copy.deepcopy(t.fp)
    train(ft, xtr, ytr, epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, seed=seed + 1)
    rows["float fine-tuned"] = {"acc": evaluate(ft, xte, yte)}
    rows["W4 (QAT)"] = finetune_variant(t, cfg, 4, None, True, cfg.qat_epochs)
    fixed = dataclasses.replace(t, lower=0.0, upper=0.2)  # snnTorch's [-thr, 1.2 thr]
    for kind in ("thr", "uniform"):
        rows[f"W4 + S4 {kind}, calibrated"] = finetune_variant(t, cfg, 4, kind, True, cfg.qat_epochs)
        rows[f"W4 + S4 {kind}, learned"] = finetune_variant(t, cfg, 4, kind, True, cfg.qat_epochs, learn=True)
        rows[f"W4 + S4 {kind}, fixed [-thr, 1.2 thr]"] = finetune_variant(fixed, cfg, 4, kind, True, cfg.qat_epochs)
        for k in (f"W4 + S4 {kind}, calibrated", f"W4 + S4 {kind}, learned", f"W4 + S4 {kind}, fixed [-thr, 1.2 thr]"):
            r = rows[k]
            log(f"seed {seed} {k}: {100 * r['acc']:.2f} %, clipped {100 * r['clipped']:.1f} %, range "  # type: ignore[operator]
                f"[{r['range'][0]:.2f}, {r['range'][1]:.2f}]  ({time.perf_counter() - t0:.0f} s)")  # type: ignore[index]
    return {"seed": seed, "task": task, "rows": rows, "wall_s": time.perf_counter() - t0}


def state_range_seeds(seeds: list[int], task: str, jobs: int = 1) -> list[dict[str, object]]:
    """:func:`state_range_rows` for every seed, ``jobs`` seeds at a time in worker processes (one thread each)."""
    import subprocess
    import tempfile

    if jobs <= 1 or len(seeds) == 1:
        return [state_range_rows(s, task, log=lambda m: print(m, flush=True)) for s in seeds]
    out: dict[int, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(seeds)
        running: list[tuple[int, subprocess.Popen]] = []
        while pending or running:
            while pending and len(running) < jobs:
                s = pending.pop(0)
                cmd = [sys.executable, __file__, "--only", "harder", "--task", task, "--seeds", str(s),
                       "--seed-json", str(Path(tmp) / f"{s}.json")]
                running.append((s, subprocess.Popen(cmd)))
            s, proc = running.pop(0)
            if proc.wait() != 0:
                raise RuntimeError(f"the worker for seed {s} failed (exit {proc.returncode})")
            out[s] = json.loads((Path(tmp) / f"{s}.json").read_text())
    return [out[s] for s in seeds]


def state_range_table(results: list[dict[str, object]]) -> str:
    """Accuracy per seed, the mean and the gap to float (mean), in percent; the clipped fraction of state rows."""
    seeds = [r["seed"] for r in results]
    names = list(results[0]["rows"])  # type: ignore[arg-type]
    fl = sum(100 * r["rows"]["float"]["acc"] for r in results) / len(results)  # type: ignore[index]
    lines = ["| network | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | vs float | clipped (mean) |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for n in names:
        v = [100 * r["rows"][n]["acc"] for r in results]  # type: ignore[index]
        c = [r["rows"][n].get("clipped") for r in results]  # type: ignore[index, union-attr]
        clip = f"{100 * sum(c) / len(c):.1f} %" if all(x is not None for x in c) else "-"
        m = sum(v) / len(v)
        lines.append(f"| {n} | " + " | ".join(f"{a:.2f}" for a in v) + f" | {m:.2f} | {m - fl:+.2f} | {clip} |")
    return "\n".join(lines)


def state_range_commands(task: str, seeds: list[int]) -> str:
    """The ``lowbit snn`` commands whose rows these are (QAT: 'QAT weights only'; states: 'QAT+SQUAT')."""
    s = " ".join(str(x) for x in seeds)
    base = f"lowbit snn {TASK_FLAGS[task]}--bits 4 --seed S"
    return (f"for S in {s}: {base}                          # float, W4 (QAT), W4 + S4 calibrated (QAT+SQUAT rows)\n"
            f"for S in {s}: {base} --state-range learned    # W4 + S4 learned\n"
            f"for S in {s}: {base} --state-range fixed      # W4 + S4 fixed [-thr, 1.2 thr]")


def main() -> int:
    """Run the benchmark and print (and save) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--report-dir", default="reports/snn")
    ap.add_argument("--only", choices=["profiles", "harder"], default=None,
                    help="profiles: float / 8-bit QAT / Loihi 2 / Xylo only; harder: W4 + 4-bit states with "
                         "calibrated, learned and fixed state ranges on a harder Randman task")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of --only profiles/harder (default 0 1)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="--only harder: seeds run in this many processes at once (one thread each; default 1)")
    ap.add_argument("--seed-json", default=None, help=argparse.SUPPRESS)  # worker mode of --jobs
    ap.add_argument("--task", choices=sorted(TASKS), default="harder",
                    help="task of --only harder: harder (16 classes, 40 units, 5-D manifold; default) or default "
                         "(lowbit snn's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.only == "harder":
        from lowbit.fileio import write_text

        torch.set_num_threads(1)  # lowbit snn's default: float results depend on the thread count
        if args.seed_json:  # a worker of --jobs: one seed, its rows to a JSON file
            write_text(Path(args.seed_json), json.dumps(state_range_rows(args.seeds[0], args.task,
                                                                         log=lambda m: print(m, flush=True)),
                                                        default=float) + "\n")
            return 0
        res = state_range_seeds(args.seeds, args.task, args.jobs)
        table = state_range_table(res)
        cmds = state_range_commands(args.task, args.seeds)
        print()
        print(table)
        print()
        print(cmds)
        out = Path(args.report_dir)
        name = "state_ranges" if args.task == "harder" else f"state_ranges_{args.task}"
        write_text(out / f"{name}.md", f"{table}\n\n```\n{cmds}\n```\n")
        write_text(out / f"{name}.json", json.dumps(res, indent=1, default=float) + "\n")
        print(f"report: {out / (name + '.md')}, {out / (name + '.json')}")
        return 0
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
