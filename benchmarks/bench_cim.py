"""Crossbar simulation time relative to the plain fake-quantized forward pass on the same batch.

    python benchmarks/bench_cim.py [--batch 256] [--repeats 5]

Prints a markdown table. The model is the small VGG (widths 16, 32) of ``lowbit cim``
with W4 DoReFa weights and 4-bit PACT activations (untrained: timing does not depend
on the weights); the first conv and the classifier stay digital, as in ``lowbit cim``.
"""
from __future__ import annotations

import argparse
import time

import torch

import lowbit
from lowbit.codebooks import build_quantizer
from lowbit.models import build_model
from lowbit.nn.act import PACT
from lowbit.nn.layers import QuantLayer
from lowbit.targets.cim import CrossbarConfig, simulate


def _model() -> torch.nn.Module:
    m = lowbit.prepare_qat(build_model("vgg", (1, 8, 8), 10, seed=0, widths=(16, 32)), "*=dorefa4,a:*=uint4:pact,fold_bn=false")
    for mod in m.modules():
        if isinstance(mod, QuantLayer):
            mod.weight_quant = build_quantizer("dorefa4")
        if isinstance(mod, PACT):
            mod.alpha.data.fill_(3.0)
    return m.eval()


def _best_times(fns: list, x: torch.Tensor, repeats: int) -> list[float]:
    """Best wall time of each function; the runs are interleaved so load changes hit all alike."""
    best = [float("inf")] * len(fns)
    with torch.no_grad():
        for f in fns:
            f(x)  # warm-up
        for _ in range(repeats):
            for i, f in enumerate(fns):
                t = time.perf_counter()
                f(x)
                best[i] = min(best[i], time.perf_counter() - t)
    return best


def main() -> None:
    """Time the fake-quantized model and its crossbar simulations; print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _model()
    x = torch.rand(args.batch, 1, 8, 8)
    labels, fns = ["fake-quantized (software)"], [model]
    for label, cfg in [
        ("ideal read-out, 1-bit cells", CrossbarConfig(cell_bits=1, adc_bits=None)),
        ("1-bit cells, 6-bit ADC", CrossbarConfig(cell_bits=1, adc_bits=6)),
        ("2-bit cells, 6-bit ADC", CrossbarConfig(cell_bits=2, adc_bits=6)),
        ("1-bit cells, 6-bit ADC, full scale", CrossbarConfig(cell_bits=1, adc_bits=6, adc_range="full_scale")),
        ("1-bit cells, 6-bit ADC, 10 % variation", CrossbarConfig(cell_bits=1, adc_bits=6, variation=0.1)),
        ("1-bit cells, 6-bit ADC, differential", CrossbarConfig(cell_bits=1, adc_bits=6, signed="differential")),
    ]:
        labels.append(label)
        fns.append(simulate(model, cfg, digital=["features.0", "classifier"]))
    times = _best_times(fns, x, args.repeats)
    print(f"batch {args.batch}, best of {args.repeats} interleaved runs, {torch.get_num_threads()} thread(s)\n")
    print("| forward pass | ms | × fake-quant |\n|---|---|---|")
    for label, t in zip(labels, times):
        print(f"| {label} | {t * 1e3:.1f} | {t / times[0]:.1f} |")


if __name__ == "__main__":
    main()
