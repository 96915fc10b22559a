"""Peer check of lowbit's crossbar simulator against IBM aihwkit-lightning and IBM aihwkit, on the digits VGG.

    PYTHONPATH=src benchmarks/.peers-venv/bin/python benchmarks/bench_cim_peers.py [--seed 0] [--chips 100,101,102]
    python benchmarks/bench_cim_peers.py --only aihwkit [--python PY] [--device-seeds 0,1,2]

``--only aihwkit`` (drift and inference noise against aihwkit 1.2.0, built from source by
benchmarks/setup_aihwkit.sh) is described in ``aihwkit_main``; it re-runs itself under the
aihwkit virtualenv. The default, ``--only lightning``, is the hardware-aware training check:

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
import functools
import importlib.util
import os
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


def _test_accuracy(m: nn.Module, *, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy (%) of ``m`` on the whole test set at once."""
    with torch.no_grad():
        return 100.0 * float((m(x).argmax(1) == y).float().mean())


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


# ---------------------------------------------------------------------------------------------
# --only aihwkit: drift and inference noise, lowbit's crossbar simulator next to IBM aihwkit 1.2.0
# ---------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
AIHWKIT_PY = (ROOT / "benchmarks" / ".aihwkit-venv" / "bin" / "python", Path("/tmp/aihw/venv/bin/python"))
RESULTS = ROOT / "benchmarks" / "results" / "cim_aihwkit.md"
_REEXEC = "LOWBIT_AIHWKIT_REEXEC"
NU_LOWBIT = (0.05, 0.02)  # bench_cim_time's PCM-like nu (mean, std)


def _aihwkit_python(given: str | None) -> Path:
    """The interpreter that has aihwkit: ``given``, else the setup script's venv, else this session's build."""
    if given:
        if not Path(given).is_file():
            raise SystemExit(f"--python must be an interpreter with aihwkit installed, got {given!r} (not a file)")
        return Path(given)
    for py in AIHWKIT_PY:
        if py.exists():
            return py
    raise SystemExit(f"aihwkit is not importable here and {AIHWKIT_PY[0]} is absent: run benchmarks/setup_aihwkit.sh "
                     "(about 35 minutes: it compiles aihwkit) or pass --python")


def _reexec_under_aihwkit(given: str | None) -> None:
    """Re-run this script under aihwkit's virtualenv with PYTHONPATH=src (aihwkit is never a lowbit dependency)."""
    if os.environ.get(_REEXEC):
        raise SystemExit(f"aihwkit is not importable by {sys.executable} (re-run under it already): check the --python venv")
    py = _aihwkit_python(given)
    env = dict(os.environ, **{_REEXEC: "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    os.execve(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]], env)


def aihwkit_scenarios() -> dict[str, dict[str, object]]:
    """aihwkit's settings compared, by column label: noise model keywords and whether to compensate.

    ``pcm``: aihwkit's PCMLikeNoiseModel as shipped (programming noise, G-dependent nu, 1/f read noise, its
    t0 = 20 s, 0.06 output noise per read; ``pcm_quiet_out``: without the output noise); ``drift``: the same drift with programming, read and output noise
    off; ``flat``: nu ~ N(0.05, 0.02) for every device and t0 = 1 s, i.e. lowbit's drift model exactly.
    """
    return {
        "aihwkit PCM (prog + read noise, ν(G)), uncompensated": {"kind": "pcm", "comp": False},
        "aihwkit PCM (prog + read noise, ν(G)), compensated": {"kind": "pcm", "comp": True},
        "aihwkit PCM, no output noise, compensated": {"kind": "pcm_quiet_out", "comp": True},
        "aihwkit PCM drift only ν(G), compensated": {"kind": "drift", "comp": True},
        "aihwkit ν = 0.05 ± 0.02 drift only, uncompensated": {"kind": "flat", "comp": False},
        "aihwkit ν = 0.05 ± 0.02 drift only, compensated": {"kind": "flat", "comp": True},
    }


def aihwkit_rpu(kind: str, comp: bool) -> object:
    """An InferenceRPUConfig with aihwkit's default periphery (7-bit DAC, 9-bit ADC) and the scenario's noise model."""
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.noise.pcm import CustomDriftPCMLikeNoiseModel, PCMLikeNoiseModel
    from aihwkit.simulator.configs import InferenceRPUConfig

    rpu = InferenceRPUConfig()
    if kind in ("pcm", "pcm_quiet_out"):
        rpu.noise_model = PCMLikeNoiseModel(g_max=25.0)
        if kind == "pcm_quiet_out":  # the fixed output noise grows relative to a drifted, then rescaled signal
            rpu.forward.out_noise = 0.0
    else:
        rpu.forward.out_noise = 0.0  # drift only: no per-read output noise either
        quiet = {"g_max": 25.0, "prog_noise_scale": 0.0, "read_noise_scale": 0.0}
        if kind == "drift":
            rpu.noise_model = PCMLikeNoiseModel(**quiet)
        else:  # lowbit's model: one nu distribution for every conductance, t0 = 1 s
            flat = {"g_lst": [0.0, 25.0], "nu_mean_lst": [NU_LOWBIT[0]] * 2, "nu_std_lst": [NU_LOWBIT[1]] * 2}
            rpu.noise_model = CustomDriftPCMLikeNoiseModel(flat, t_0=1.0, **quiet)
    rpu.drift_compensation = GlobalDriftCompensation() if comp else None
    return rpu


def float_vgg(seed: int, epochs: int, ds: object) -> nn.Module:
    """The digits VGG (16, 32) trained in float with lowbit's loop (what aihwkit converts)."""
    from lowbit.train import fit, seed_everything

    seed_everything(seed)
    model = build_model("vgg", ds.input_shape, ds.num_classes, seed=seed, widths=(16, 32))  # type: ignore[attr-defined]
    fit(model, loader(ds.train, 64, shuffle=True, seed=seed), epochs=epochs, lr=3e-3, desc="float vgg")  # type: ignore[attr-defined]
    return model.eval()


def aihwkit_curve(model: nn.Module, kind: str, comp: bool, times: dict[str, float], seeds: list[int],
                  acc: object) -> list[list[float]]:  # fmt: skip
    """Accuracy per time (rows) and device seed (columns): convert, program once per seed, drift to each time."""
    from aihwkit.nn.conversion import convert_to_analog

    out: list[list[float]] = [[] for _ in times]
    for s in seeds:
        torch.manual_seed(s)  # programming noise, nu draws and read noise come from torch's generator
        analog = convert_to_analog(copy.deepcopy(model), aihwkit_rpu(kind, comp), exclude_modules=list(DIGITAL)).eval()
        analog.program_analog_weights()
        for i, t in enumerate(times.values()):
            # aihwkit counts t_inference from the end of programming and drifts by ((t_inf + t0)/t0)^-nu;
            # for the flat model (t0 = 1 s) t_inf = t - 1 s gives lowbit's (t/t0)^-nu with t0 = 1 s exactly.
            analog.drift_analog_weights(t - 1.0 if kind == "flat" else t)
            out[i].append(acc(analog))  # type: ignore[operator]
    return out


def aihwkit_main(args: argparse.Namespace) -> None:
    """Drift and inference noise: aihwkit's PCM model on the float-trained VGG next to lowbit's simulator; markdown.

    aihwkit: the digits VGG trained in float (``--epochs``, lowbit's loop), converted with
    ``convert_to_analog`` (first conv and classifier digital) to ``InferenceRPUConfig`` tiles,
    ``program_analog_weights()`` once per device seed, then ``drift_analog_weights(t)`` at each time.
    lowbit: the W4A4 model and crossbar of bench_cim_time (1-bit cells, differential pairs, 6-bit ADC,
    no variation, nu = 0.05 ± 0.02, t0 = 1 s), with and without global drift compensation.
    Each cell: mean ± std over ``--device-seeds``.
    """
    if importlib.util.find_spec("aihwkit") is None:
        _reexec_under_aihwkit(args.python)
    import aihwkit
    from bench_cim_time import NU, TIMES, scenarios  # noqa: PLC0415 (same folder, on sys.path)

    from lowbit.fileio import write_text

    assert NU == NU_LOWBIT, "the flat aihwkit rows must use bench_cim_time's nu"
    seeds = [int(s) for s in args.device_seeds.split(",") if s.strip()]
    ds = get_dataset("digits")
    x, y = ds.test.tensors

    acc = functools.partial(_test_accuracy, x=x, y=y)

    flt = float_vgg(args.seed, args.epochs, ds)
    from aihwkit.nn.conversion import convert_to_analog

    clean = acc(convert_to_analog(copy.deepcopy(flt), aihwkit_rpu("drift", False), exclude_modules=list(DIGITAL)).eval())
    cols: dict[str, list[list[float]]] = {}
    for label, sc in aihwkit_scenarios().items():
        cols[label] = aihwkit_curve(flt, str(sc["kind"]), bool(sc["comp"]), TIMES, seeds, acc)
    qat = qat_model("vgg", args.epochs, args.seed, ds)
    soft = acc(qat)
    for label, kw in list(scenarios(1, 6).items())[:2]:  # bench_cim_time's PCM drift, differential, +/- compensation
        cols[f"lowbit {label} (W4A4, 1-bit cells, 6-bit ADC)"] = [
            [acc(simulate(qat, CrossbarConfig(**kw, t_seconds=t, seed=d), digital=DIGITAL)) for d in seeds]  # type: ignore[arg-type]
            for t in TIMES.values()]  # fmt: skip

    def cell(v: list[float]) -> str:
        return f"{statistics.mean(v):.2f} ± {statistics.pstdev(v):.2f}"

    lines = [f"digits VGG (16, 32), seed {args.seed}, {args.epochs} epochs, {len(y)} test images; device seeds "
             f"{args.device_seeds}; aihwkit {aihwkit.__version__}, torch {torch.__version__}",
             f"aihwkit: float-trained model {acc(flt):.2f} % in software, {clean:.2f} % on aihwkit's tiles before "
             "programming (7-bit DAC, 9-bit ADC, no output noise); t0 = 20 s for its PCM model (t counts from the end "
             "of programming: drift ((t + 20 s)/20 s)^-ν), t0 = 1 s for the ν = 0.05 ± 0.02 rows",
             f"lowbit: W4A4 QAT model {soft:.2f} % in software; crossbar t0 = 1 s, drift (t/1 s)^-ν, ν ~ N(0.05, 0.02)",
             "", "| time after programming | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]  # fmt: skip
    for i, name in enumerate(TIMES):
        lines.append(f"| {name} | " + " | ".join(cell(v[i]) for v in cols.values()) + " |")
    lines.append("| Δ at 1 year vs 1 s (pt) | " + " | ".join(
        f"{statistics.mean(v[-1]) - statistics.mean(v[0]):+.2f}" for v in cols.values()) + " |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    write_text(Path(args.out), "# Drift and inference noise: lowbit's crossbar simulator vs IBM aihwkit\n\n"
               "Written by `python benchmarks/bench_cim_peers.py --only aihwkit` (issue 19).\n\n" + text + "\n")  # fmt: skip

def main() -> None:
    """Parse the arguments and run the chosen peer check."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("lightning", "aihwkit"), default="lightning",
                    help="lightning: hardware-aware training vs aihwkit-lightning (default); aihwkit: drift and noise vs aihwkit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chips", default="100,101,102")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--aware-epochs", type=int, default=15)
    ap.add_argument("--sigma", type=float, default=0.094)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per side (default 30)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--python", default=None,
                    help=f"aihwkit's interpreter for --only aihwkit (default {AIHWKIT_PY[0]}, else {AIHWKIT_PY[1]} when present)")
    ap.add_argument("--device-seeds", default="0,1,2", help="--only aihwkit: programming/drift seeds (default 0,1,2)")
    ap.add_argument("--out", default=str(RESULTS), help=f"--only aihwkit: where the table is written (default {RESULTS})")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.only == "aihwkit":
        aihwkit_main(args)
    else:
        lightning_main(args)


def lightning_main(args: argparse.Namespace) -> None:
    """Train both, evaluate under the same test-time noise, time the training steps; print markdown."""
    import aihwkit_lightning

    chips = [int(c) for c in args.chips.split(",") if c.strip()]
    ds = get_dataset("digits")
    x, y = ds.test.tensors

    acc = functools.partial(_test_accuracy, x=x, y=y)

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
