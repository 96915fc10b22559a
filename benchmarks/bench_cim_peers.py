"""Peer check of lowbit's hardware-aware crossbar training against IBM aihwkit-lightning, on the digits VGG.

    PYTHONPATH=src benchmarks/.peers-venv/bin/python benchmarks/bench_cim_peers.py [--seed 0] [--chips 100,101,102]

Runs only under the peers' virtualenv (aihwkit-lightning 2.1.0, pinned to torch 2.13.0;
never a lowbit dependency). Both sides train the same VGG (digits, widths 16/32; first conv
and classifier digital) for ``--epochs + --aware-epochs`` epochs:

- **lowbit**: W4A4 DoReFa/PACT QAT (``lowbit cim``'s model), then ``noise_aware`` fine-tuning
  with the simulator's per-cell noise of 2-bit cells at σ = 10 % and an 8-bit ADC (STE).
- **aihwkit-lightning**: ``TorchInferenceRPUConfig`` with 4-bit per-channel weight
  discretisation (``res = 2^4 - 2``) plus per-channel additive Gaussian weight noise of std
  ``--sigma`` x max|W_c| (``ADD_NORMAL_PER_CHANNEL``; 0.094 is what lowbit's 2-bit cells at
  σ = 10 % give a middle code: 0.1 sqrt(2 (3^2 + 4^2 1^2)) / 7.5 code units), a 4-bit DAC
  with a learned input range, an 8-bit ADC (``out_res = 2^8 - 2``, ``out_bound`` 10),
  128-row tiles; trained with lowbit's loop (``run_epochs``) and ``AnalogOptimizer(Adam)``.

Test-time noise, the same for both: per-chip programming noise added to the weights each
layer computes with (lowbit: the fake-quantized weight; aihwkit-lightning: its analog
weight, read through its own DAC/ADC), std ``--sigma`` x max|W_c| per output channel, one
draw per chip seed, mean over ``--chips``. lowbit's model is also read through lowbit's own
crossbar simulator (2-bit cells, σ = 10 %, 8-bit ADC) for reference. The training-step time
ratio is measured interleaved (benchmarks/_timing.step_time_table, batch 64).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import step_time_table  # noqa: E402

from lowbit.commands.cim import aware_model, qat_model  # noqa: E402
from lowbit.data import get_dataset, loader  # noqa: E402
from lowbit.loop import run_epochs  # noqa: E402
from lowbit.models import build_model  # noqa: E402
from lowbit.nn.layers import QuantConv2d, QuantLinear  # noqa: E402
from lowbit.targets.cim import CrossbarConfig, simulate  # noqa: E402

DIGITAL = ("features.0", "classifier")


def aihwkit_model(seed: int, sigma: float, ds: object) -> nn.Module:
    """The digits VGG converted by aihwkit-lightning with W4 discretisation, weight noise, 4-bit DAC and 8-bit ADC."""
    from aihwkit_lightning.nn.conversion import convert_to_analog
    from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig
    from aihwkit_lightning.simulator.parameters import (WeightClipType, WeightNoiseInjectionType,
                                                        WeightQuantizationType)  # fmt: skip

    rpu = TorchInferenceRPUConfig()
    rpu.forward.inp_res = 2**4 - 2
    rpu.forward.out_res = 2**8 - 2
    rpu.forward.out_bound = 10.0
    rpu.pre_post.input_range.enable = True
    rpu.modifier.quantization_type = WeightQuantizationType.DISCRETIZE_PER_CHANNEL
    rpu.modifier.res = 2**4 - 2
    rpu.modifier.noise_type = WeightNoiseInjectionType.ADD_NORMAL_PER_CHANNEL
    rpu.modifier.std_dev = sigma
    rpu.clip.type = WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL
    rpu.clip.sigma = 2.5
    rpu.mapping.max_input_size = 128
    torch.manual_seed(seed)
    float_model = build_model("vgg", ds.input_shape, ds.num_classes, seed=seed, widths=(16, 32))  # type: ignore[attr-defined]
    return convert_to_analog(float_model, rpu, exclude_modules=list(DIGITAL))


def train_aihwkit(model: nn.Module, ds: object, epochs: int, seed: int, lr: float = 3e-3) -> nn.Module:
    """Train with lowbit's loop, Adam wrapped by AnalogOptimizer (post-step weight clipping), cosine decay."""
    from aihwkit_lightning.optim import AnalogOptimizer

    batches = loader(ds.train, 64, shuffle=True, seed=seed)  # type: ignore[attr-defined]
    opt = AnalogOptimizer(torch.optim.Adam, model.analog_layers, model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(batches))
    model.train()
    run_epochs(model, batches, epochs=epochs, optimizer=opt, scheduler=sched, desc="aihwkit-lightning")
    return model.eval()


def _channel_noise(w: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """One programming-noise draw: std ``sigma * max|W_c|`` per output channel (aihwkit's per-channel convention)."""
    wmax = w.detach().abs().reshape(w.shape[0], -1).amax(1).view(-1, *[1] * (w.dim() - 1))
    return sigma * wmax * torch.randn(w.shape, generator=gen)


class _FixedNoise:
    """Forward hook on a lowbit weight quantizer: adds one fixed noise draw to the fake-quantized weight."""

    def __init__(self, sigma: float, gen: torch.Generator) -> None:
        self.sigma, self.gen, self.noise = sigma, gen, None

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.noise is None:
            self.noise = _channel_noise(output, self.sigma, self.gen)
        return output + self.noise


def lowbit_noisy(model: nn.Module, sigma: float, chip: int) -> nn.Module:
    """A copy of the lowbit model whose analog layers compute with one programming-noise draw on their weights."""
    m = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(chip)
    for name, mod in m.named_modules():
        if isinstance(mod, (QuantLinear, QuantConv2d)) and name not in DIGITAL and mod.weight_quant is not None:
            mod.weight_quant.register_forward_hook(_FixedNoise(sigma, gen))
    return m


def aihwkit_noisy(model: nn.Module, sigma: float, chip: int) -> nn.Module:
    """A copy of the aihwkit-lightning model with one programming-noise draw added to each analog weight."""
    m = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(chip)
    with torch.no_grad():
        for layer in m.analog_layers():
            layer.weight.add_(_channel_noise(layer.weight, sigma, gen))
    return m


def main() -> None:
    """Train both, evaluate under the same test-time noise, time the training steps; print markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chips", default="100,101,102")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--aware-epochs", type=int, default=15)
    ap.add_argument("--sigma", type=float, default=0.094)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per side (default 30)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import aihwkit_lightning

    chips = [int(c) for c in args.chips.split(",") if c.strip()]
    ds = get_dataset("digits")
    x, y = ds.test.tensors

    def acc(m: nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((m(x).argmax(1) == y).float().mean())

    cfg = CrossbarConfig(cell_bits=2, adc_bits=8, variation=0.1)
    base = qat_model("vgg", args.epochs, args.seed, ds)
    lb = aware_model(base, cfg, args.aware_epochs, args.seed, ds, digital=DIGITAL)
    ai = train_aihwkit(aihwkit_model(args.seed, args.sigma, ds), ds, args.epochs + args.aware_epochs, args.seed)
    rows = {
        "lowbit noise-aware (W4A4, 2-bit cells σ=10 %, 8-bit ADC)": (lb, lowbit_noisy),
        f"aihwkit-lightning {aihwkit_lightning.__version__} (W4, σ={args.sigma}·max|W_c|, 4-bit DAC, 8-bit ADC)": (ai, aihwkit_noisy),
    }
    print(f"digits VGG (16, 32), seed {args.seed}, {args.epochs + args.aware_epochs} epochs each, {len(y)} test images, "
          f"test-time noise: per-channel additive σ={args.sigma}·max|W_c| on the analog layers' weights, chips {args.chips}\n")
    print("| model | clean % | same test-time noise % (mean ± std) |\n|---|---:|---:|")
    for label, (m, noisy) in rows.items():
        accs = [acc(noisy(m, args.sigma, c)) for c in chips]
        print(f"| {label} | {acc(m):.2f} | {statistics.mean(accs):.2f} ± {statistics.pstdev(accs):.2f} |")
    sim = [acc(simulate(lb, CrossbarConfig(cell_bits=2, adc_bits=8, variation=0.1, seed=c), digital=DIGITAL)) for c in chips]
    print(f"\nlowbit's model on lowbit's crossbar simulator (2-bit cells, σ=10 %, 8-bit ADC): {statistics.mean(sim):.2f} %\n")
    # Training-step time, interleaved: the float VGG, lowbit's noise-aware model, aihwkit-lightning's.
    xb, yb = next(iter(loader(ds.train, 64, shuffle=True, seed=args.seed)))
    flt = build_model("vgg", ds.input_shape, ds.num_classes, seed=args.seed, widths=(16, 32))
    variants = {"float VGG (torch)": flt, "lowbit noise-aware": lb, "aihwkit-lightning": ai}
    from aihwkit_lightning.optim import AnalogOptimizer

    opts = {"float VGG (torch)": torch.optim.Adam(flt.parameters(), 1e-4), "lowbit noise-aware": torch.optim.Adam(lb.parameters(), 1e-4),
            "aihwkit-lightning": AnalogOptimizer(torch.optim.Adam, ai.analog_layers, ai.parameters(), lr=1e-4)}  # fmt: skip
    print(step_time_table("training step, batch 64", variants, opts, xb, yb, args.steps))


if __name__ == "__main__":
    main()
