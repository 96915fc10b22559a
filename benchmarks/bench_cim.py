"""Crossbar simulation time relative to the plain fake-quantized forward pass on the same batch.

    python benchmarks/bench_cim.py [--batch 256] [--repeats 5]

``--presets`` prints instead the issue-23 accuracy table: a W4A4 DoReFa/PACT VGG trained as
``lowbit cim`` trains it (digits, widths 16/32), read out through 1- and 2-bit cells x ADC
4/5/6/8 bits (no device variation) under ``CrossbarConfig.preset("neurosim")`` and
``preset("torchinference_rram")``, with the 6-bit-ADC gap to software next to the seed's
(VGG7 on CIFAR-10: 91.92 vs 92.12 %, -0.2 pt with 1-bit cells; 91.63 %, -0.5 pt with 2-bit):

    python benchmarks/bench_cim.py --presets [--seeds 0] [--epochs 10]

``--cost`` prints the energy / latency / area per inference (``lowbit.targets.cim.cost``, its
docstring cites each parameter) over ``lowbit cim``'s sweep, cells 1/2 bits x ADC 4/5/6/8
bits, with the ADC's share of the energy, for both signed schemes:

    python benchmarks/bench_cim.py --cost

Prints a markdown table. The model is the small VGG (widths 16, 32) of ``lowbit cim``
with W4 DoReFa weights and 4-bit PACT activations (untrained: timing does not depend
on the weights); the first conv and the classifier stay digital, as in ``lowbit cim``.
"""
from __future__ import annotations

import argparse
import time

import torch

import lowbit
from lowbit.quantizers import build_quantizer
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


SEED_GAP = {1: (91.92, 92.12), 2: (91.63, 92.12)}  # TorchInference_RRAM README / logs, 6-bit ADC, CIFAR-10 VGG7


def presets_table(seeds: list[int], epochs: int, cells: tuple[int, ...] = (1, 2), adcs: tuple[int, ...] = (4, 5, 6, 8)) -> str:
    """Accuracy on crossbars under both presets (rows: cell x ADC), and the 6-bit gap beside the seed's."""
    from lowbit.commands.cim import qat_model
    from lowbit.data import get_dataset

    ds = get_dataset("digits")
    x, y = ds.test.tensors
    presets = ("neurosim", "torchinference_rram")
    acc: dict[tuple[str, int, int], list[float]] = {}
    soft: list[float] = []

    def score(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((m(x).argmax(1) == y).float().mean())

    for seed in seeds:
        model = qat_model("vgg", epochs, seed, ds)
        soft.append(score(model))
        for p in presets:
            for c in cells:
                for b in adcs:
                    cfg = CrossbarConfig.preset(p, cell_bits=c, adc_bits=b, seed=seed)
                    acc.setdefault((p, c, b), []).append(score(simulate(model, cfg, digital=["features.0", "classifier"])))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    sw = mean(soft)
    lines = [f"software (fake-quant) {sw:.2f} %, seeds {','.join(map(str, seeds))}, digits test set ({len(y)} images)", "",
             "| cell bits | ADC bits | neurosim % | torchinference_rram % |", "|---|---|---|---|"]  # fmt: skip
    for c in cells:
        for b in adcs:
            lines.append(f"| {c} | {b} | {mean(acc[('neurosim', c, b)]):.2f} | {mean(acc[('torchinference_rram', c, b)]):.2f} |")
    lines += ["", "| 6-bit ADC gap to software | neurosim | torchinference_rram | seed (VGG7, CIFAR-10) |", "|---|---|---|---|"]
    for c in cells:
        if 6 in adcs and c in SEED_GAP:
            hw, s = SEED_GAP[c]
            lines.append(f"| {c}-bit cells | {mean(acc[('neurosim', c, 6)]) - sw:+.2f} pt | "
                         f"{mean(acc[('torchinference_rram', c, 6)]) - sw:+.2f} pt | {hw - s:+.2f} pt ({hw} vs {s} %) |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Time the fake-quantized model and its crossbar simulations (or, with --presets, the accuracy table); print markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    ap.add_argument("--presets", action="store_true", help="the accuracy table under both crossbar presets")
    ap.add_argument("--seeds", default="0", help="training and device seeds for --presets (default 0)")
    ap.add_argument("--epochs", type=int, default=10, help="QAT epochs for --presets (default 10, as lowbit cim)")
    ap.add_argument("--cost", action="store_true", help="energy / latency / area over the lowbit cim sweep")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.presets:
        print(presets_table([int(s) for s in args.seeds.split(",")], args.epochs))
        return
    if args.cost:
        from lowbit.commands.cim import cost_sweep

        x1 = torch.rand(1, 1, 8, 8)
        for signed in ("dummy", "differential"):
            print(f"\nsigned={signed}, digits W4A4 VGG (16, 32), first conv and classifier digital, one 8x8 image\n")
            print(cost_sweep(_model(), [1, 2], [4, 5, 6, 8], x1, ("features.0", "classifier"), signed=signed))
        return
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
        ("1-bit cells, 6-bit ADC, torchinference_rram", CrossbarConfig.preset("torchinference_rram", cell_bits=1, adc_bits=6)),
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
