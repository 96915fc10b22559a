"""Zoo timings (issue 21): ``prepare_qat`` + ``convert`` per zoo model, and the W4 QAT step of ResNet-8 against float.

    .venv/bin/python benchmarks/bench_zoo.py [--seed 0] [--threads 1] [--repeat 3] [--steps 30]

Prints two markdown tables, medians over ``--repeat`` runs (``--steps`` interleaved
training steps), each with its float baseline measured in the same run:

- ``prepare_qat(model, "w4:lsq")`` + ``convert`` on the full-size zoo models (ResNet-18
  is torchvision's 11.7 M parameters), and ``"w4:lsq,a8"`` with one calibration sample
  (the graph path where forward has functional ops); the baseline is ``copy.deepcopy``
  of the float model (every verb copies the model);
- a training step (SGD, batch 32, 3x32x32) of ResNet-8: float with BatchNorm, float with
  BN folded, W4 QAT (``w4:lsq``) and W4A8 QAT (``w4:lsq,a8``), the ratio against float.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch

import lowbit
from lowbit.models import build_model
from lowbit.models.zoo import ZOO, zoo_input
from lowbit.nn import fold_bn

try:
    from _timing import step_time_table, wall_times
except ImportError:  # run from the repository root as a module
    from benchmarks._timing import step_time_table, wall_times


def _trained_float(name: str, seed: int) -> torch.nn.Module:
    e = ZOO[name]
    model = build_model(name, e.input_shape, e.num_classes, seed=seed)
    model.train()
    with torch.no_grad():  # BatchNorms that have seen data, as a trained model's
        model(zoo_input(name, 2, small=False, seed=seed))
    return model.eval()


def convert_table(seed: int, repeat: int) -> str:
    """Median seconds of prepare_qat + convert per zoo model, against a deepcopy of the float model."""
    lines = [
        "| model (full size) | params | deepcopy s | w4:lsq prepare+convert s | × copy | w4:lsq,a8 (+1 calib sample) s | graph path |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for name in sorted(ZOO):
        model = _trained_float(name, seed)
        x = zoo_input(name, 1, small=False, seed=seed)
        n = sum(p.numel() for p in model.parameters())
        copy_s = statistics.median(wall_times(lambda: copy.deepcopy(model), repeat))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w_s = statistics.median(wall_times(lambda: lowbit.convert(lowbit.prepare_qat(model, "w4:lsq")), repeat))
            a_s = statistics.median(wall_times(lambda: lowbit.convert(lowbit.prepare_qat(model, "w4:lsq,a8", calib=[x])), repeat))
            graph = isinstance(lowbit.prepare_qat(model, "w4:lsq,a8"), torch.fx.GraphModule)
        lines.append(f"| {name} | {n:,} | {copy_s:.3f} | {w_s:.3f} | {w_s / copy_s:.1f} | {a_s:.3f} | {'yes' if graph else 'no'} |")
    return "\n".join(lines)


def step_table(seed: int, steps: int) -> str:
    """Median training step of ResNet-8 (float, folded float, W4 QAT, W4A8 QAT), interleaved, and the ratios."""
    torch.manual_seed(seed)
    model = _trained_float("resnet8", seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    folded = copy.deepcopy(model)
    fold_bn(folded)
    variants = {
        "float (BN)": model,
        "float, BN folded": folded,
        "W4 QAT (w4:lsq)": lowbit.prepare_qat(model, "w4:lsq"),
        "W4A8 QAT (w4:lsq,a8, graph path)": lowbit.prepare_qat(model, "w4:lsq,a8", calib=[x]),
    }
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in variants.items()}
    return step_time_table("ResNet-8 training step (batch 32, 3x32x32)", variants, opts, x, y, steps)


def main() -> None:
    """Print both tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(convert_table(args.seed, args.repeat))
    print()
    print(step_table(args.seed, args.steps))


if __name__ == "__main__":
    main()
