"""The SNN quantization ablation: FP32 / PTQ / QAT / stateful QAT / QAT + stateful QAT at several bit widths.

One recurrent SNN is trained in float on a Randman task; every quantized variant
starts from its weights. PTQ quantizes the trained weights (and states) without
training; QAT fine-tunes with fixed-point weights (per population, refitted every
batch); stateful QAT (SQUAT) fine-tunes with quantized membrane states; the last
row does both. States use uniform or threshold-centred levels whose range is
calibrated from the float network's membrane distribution (or snnTorch's fixed
``[-thr, 1.2 thr]``), and the fraction of clipped states is reported.

Threshold-centred levels use snnTorch's multiplier (the ratio of successive gaps)
except where ``thr_multiplier`` says otherwise: at 4 bits snnTorch's 0.5 halves
each gap, so on the calibrated range [-7.6, 5.4] of the default task the levels
bunch at [0.94, 1.07] and -7.6 to 0.5 gets 4 coarse steps; 0.7 (snnTorch's 5-bit
value) spreads them (levels -7.6, -4.9, -3.1, -1.8, -0.9, -0.2, 0.2, 0.5, ...). 4-bit
QAT + SQUAT (thr), mean of seeds 0-2: multiplier 0.5 -> 92.2 %, 0.7 -> 94.9 %; with
the range calibrated on the quantized-weight network instead: 0.5 -> 92.2 %,
0.6 -> 94.0 %, 0.7 -> 94.5 %, 0.8 -> 94.0 %, 0.9 -> 86.2 %.

``state_range="learned"``: the fine-tuned state variants start from the calibrated
range and train its ends with LSQ's gradient (:class:`~lowbit.snn.state_lsq.LearnedStateQuantizer`,
Adam at ``state_lr``), then evaluate with the learned levels frozen; PTQ rows (no
training) keep the calibrated range. It is not the default: 4-bit QAT + SQUAT, mean of
seeds 0-1 (``benchmarks/bench_snn.py --only harder [--task default]``): thr levels,
calibrated -> learned, 95.4 -> 93.1 % on the default task (state_lr 1e-3: 95.1) and
99.78 -> 99.94 % on the harder one (16 classes, 40 units, 5-D; float 99.94); uniform
levels gain from it, 89.6 -> 92.5 % and 99.41 -> 99.59 %.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..data.spiking import randman_raster, split
from .network import SNN
from .quant import StateQuantizer, calibrate_state_range, state_quantizer
from .state_lsq import LearnedStateQuantizer, freeze_states
from .train import evaluate, record_membrane, train

__all__ = ["AblationConfig", "run_ablation", "format_table", "plot_state_levels", "state_optimizer", "STATE_RANGES",
           "Trained", "train_float", "finetune_variant"]

STATE_KINDS = ("uniform", "thr")
STATE_RANGES = ("calibrated", "learned", "fixed")


@dataclass
class AblationConfig:
    """Everything that defines one ablation run (the defaults are the ``lowbit snn`` task)."""

    seed: int = 0
    bits: tuple[int, ...] = (8, 4, 2)
    nb_classes: int = 10
    nb_units: int = 50
    nb_steps: int = 30
    dim_manifold: int = 2
    alpha: float = 2.0
    nb_samples: int = 500
    hidden: int = 128
    recurrent: bool = True
    beta: float = 0.9
    epochs: int = 12
    qat_epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    qat_lr: float = 1e-3
    weight_format: str = "fxp{bits}:p99"
    scope: str = "population"
    state_range: str = "calibrated"
    state_pct: tuple[float, float] = (2.0, 98.0)
    state_lr: float = 1e-2
    thr_multiplier: dict[int, float] = field(default_factory=lambda: {4: 0.7})
    extra: dict[str, object] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError on a bad setting."""
        if not self.bits or any(isinstance(b, bool) or not isinstance(b, int) or not 1 < b <= 16 for b in self.bits):
            raise ValueError(f"bits must be ints in 2..16, got {self.bits!r}")
        if self.state_range not in STATE_RANGES:
            raise ValueError(f"state_range must be one of {STATE_RANGES}, got {self.state_range!r}")
        if isinstance(self.state_lr, bool) or not isinstance(self.state_lr, (int, float)) or not self.state_lr > 0:
            raise ValueError(f"state_lr must be a positive number, got {self.state_lr!r}")
        if "{bits}" not in self.weight_format:
            raise ValueError(f"weight_format must contain '{{bits}}', got {self.weight_format!r}")
        for b, m in self.thr_multiplier.items():
            if not (isinstance(m, (int, float)) and 0 < m <= 1):
                raise ValueError(f"thr_multiplier[{b}] must be a number in (0, 1], got {m!r}")
        for name in ("epochs", "qat_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")


def _set_states(model: SNN, q: StateQuantizer | LearnedStateQuantizer | None) -> None:
    model.set_state_quant(q)


def state_optimizer(model: torch.nn.Module, lr: float, state_lr: float) -> torch.optim.Optimizer:
    """Adam over the model: weights at ``lr``, learned state-range ends (LSQ) at ``state_lr``."""
    ends = {id(p) for mod in model.modules() if isinstance(mod, LearnedStateQuantizer) for p in mod.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ends]
    groups: list[dict[str, object]] = [{"params": rest, "lr": lr}]
    if ends:
        # the ends are state values (a few units): at the weights' rate they would barely move in a few epochs
        groups.append({"params": [p for p in model.parameters() if id(p) in ends], "lr": state_lr})
    return torch.optim.Adam(groups)  # type: ignore[arg-type]


def _eval_clip(model: SNN, x: torch.Tensor, y: torch.Tensor, q: StateQuantizer | None) -> tuple[float, float | None]:
    if q is None:
        return evaluate(model, x, y), None
    q.start_tracking()
    acc = evaluate(model, x, y)
    return acc, q.stop_tracking()


@dataclass
class Trained:
    """The float network of an ablation with its data split and the calibrated state range."""

    fp: SNN
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_train, y_train, x_test, y_test
    lower: float
    upper: float
    threshold: float
    mem: torch.Tensor
    step_s: float


def train_float(cfg: AblationConfig, progress: bool | None = False) -> Trained:
    """The Randman task of ``cfg``, its float network trained, and the state range (calibrated or snnTorch's fixed)."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    x, y = randman_raster(cfg.nb_classes, cfg.nb_units, cfg.nb_steps, 1.0, cfg.dim_manifold, 1, cfg.nb_samples,
                          cfg.alpha, True, cfg.seed)
    xtr, ytr, xte, yte = split(x, y, 0.2, seed=cfg.seed)
    fp = SNN(cfg.nb_units, cfg.hidden, cfg.nb_classes, recurrent=cfg.recurrent, beta=cfg.beta, seed=cfg.seed)
    h = train(fp, xtr, ytr, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, progress=progress)
    thr = fp.hidden[0].threshold
    mem = record_membrane(fp, xtr[:512])
    if cfg.state_range in ("calibrated", "learned"):
        lower, upper = calibrate_state_range(mem, thr, *cfg.state_pct)
    else:
        lower, upper = 0.0, 0.2  # snnTorch's defaults: [-thr, 1.2 thr]
    return Trained(fp, (xtr, ytr, xte, yte), lower, upper, thr, mem, sum(h["step_s"]) / max(len(h["step_s"]), 1))


def finetune_variant(t: Trained, cfg: AblationConfig, bits: int, kind: str | None, quant_w: bool, train_epochs: int,
                     learn: bool = False, progress: bool | None = False) -> dict[str, object]:
    """One variant from the float network: weights and/or states quantized, fine-tuned, evaluated.

    ``learn``: the states start from the calibrated range and train its ends (LSQ); evaluated frozen.
    Returns acc, clipped (None without states), the level range used and the mean step time.
    """
    xtr, ytr, xte, yte = t.data
    m = copy.deepcopy(t.fp)
    if quant_w:
        m.quantize_weights(cfg.weight_format.format(bits=bits), cfg.scope)
    mult = cfg.thr_multiplier.get(bits) if kind == "thr" else None
    learn = learn and kind is not None and train_epochs > 0
    q: StateQuantizer | LearnedStateQuantizer | None = None
    if kind is not None:
        q = (LearnedStateQuantizer(kind, bits, t.threshold, t.lower, t.upper, mult) if learn
             else state_quantizer(kind, bits, t.threshold, t.lower, t.upper, mult))
    _set_states(m, q)
    step = None
    if train_epochs:
        hh = train(m, xtr, ytr, epochs=train_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, seed=cfg.seed + 1,
                   optimizer=state_optimizer(m, cfg.qat_lr, cfg.state_lr), progress=progress)
        step = sum(hh["step_s"]) / len(hh["step_s"])
    if learn:
        freeze_states(m)  # evaluate with the learned levels fixed: exact rounding, clip counts
        q = m.hidden[0].state_quant
    acc, clipped = _eval_clip(m, xte, yte, q)  # type: ignore[arg-type]
    rng = None if q is None else [q.lo, q.hi]
    return {"acc": acc, "clipped": clipped, "range": rng, "step_s": step}


def run_ablation(cfg: AblationConfig, log: Callable[[str], None] = print, progress: bool | None = False) -> dict[str, object]:
    """Train and evaluate every variant; returns the config, the rows, timings and the FP membrane sample.

    ``progress``: False silent, None follows :func:`lowbit.progress.set_mode`, True shows progress.
    """
    cfg.validate()
    t_start = time.perf_counter()
    t = train_float(cfg, progress)
    xtr, ytr, xte, yte = t.data
    fp_acc = evaluate(t.fp, xte, yte)
    log(f"FP32: {100 * fp_acc:.2f} %  ({time.perf_counter() - t_start:.0f} s)")
    rows: list[dict[str, object]] = [{"method": "FP32", "bits": 32, "states": "-", "acc": fp_acc, "clipped": None}]
    step_times: dict[str, float] = {"float": t.step_s}
    learned_ranges: dict[str, list[float]] = {}
    if cfg.qat_epochs:
        # the float network fine-tuned as long as every QAT variant: the fair baseline for "within N points"
        ft = copy.deepcopy(t.fp)
        train(ft, xtr, ytr, epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, seed=cfg.seed + 1)
        rows.append({"method": "FP32 fine-tuned", "bits": 32, "states": "-", "acc": evaluate(ft, xte, yte), "clipped": None})
        log(f"FP32 fine-tuned {cfg.qat_epochs} more epochs: {100 * rows[-1]['acc']:.2f} %")  # type: ignore[operator]

    def variant(method: str, bits: int, kind: str | None, quant_w: bool, train_epochs: int) -> None:
        learn = cfg.state_range == "learned"
        r = finetune_variant(t, cfg, bits, kind, quant_w, train_epochs, learn, progress)
        if r["step_s"] is not None:
            step_times.setdefault(f"{method}@{bits}", r["step_s"])  # type: ignore[arg-type]
        if learn and kind is not None and train_epochs:
            learned_ranges[f"{method}@{bits}:{kind}"] = r["range"]  # type: ignore[assignment]
        acc, clipped = r["acc"], r["clipped"]
        rows.append({"method": method, "bits": bits, "states": kind or "-", "acc": acc, "clipped": clipped})
        clip_s = f", clipped {100 * clipped:.2f} %" if clipped is not None else ""  # type: ignore[operator]
        log(f"{method:>14} {bits} bit {kind or '':>7}: {100 * acc:.2f} %{clip_s}  ({time.perf_counter() - t_start:.0f} s)")  # type: ignore[operator]

    for b in cfg.bits:
        variant("PTQ", b, None, True, 0)
        for k in STATE_KINDS:
            variant("PTQ", b, k, True, 0)
        variant("QAT", b, None, True, cfg.qat_epochs)
        for k in STATE_KINDS:
            variant("SQUAT", b, k, False, cfg.qat_epochs)
        for k in STATE_KINDS:
            variant("QAT+SQUAT", b, k, True, cfg.qat_epochs)
    wall = time.perf_counter() - t_start
    return {
        "config": asdict(cfg),
        "rows": rows,
        "state_range": {"lower_limit": t.lower, "upper_limit": t.upper, "threshold": t.threshold},
        "learned_ranges": learned_ranges,
        "step_s": step_times,
        "wall_s": wall,
        "mem_sample": t.mem,
    }


def format_table(result: dict[str, object]) -> str:
    """The ablation as a markdown table: one row per method and state kind, one column per bit width."""
    rows = result["rows"]  # type: ignore[assignment]
    bits = list(result["config"]["bits"])  # type: ignore[index]
    fp = next(r for r in rows if r["method"] == "FP32")  # type: ignore[union-attr]
    head = "| method | states | " + " | ".join(f"{b} bit" for b in bits) + " |"
    lines = [head, "|" + "---|" * (2 + len(bits)), f"| FP32 | - | " + " | ".join(f"{100 * fp['acc']:.2f}" for _ in bits) + " |"]
    ft = next((r for r in rows if r["method"] == "FP32 fine-tuned"), None)  # type: ignore[union-attr]
    if ft is not None:
        lines.append("| FP32 fine-tuned | - | " + " | ".join(f"{100 * ft['acc']:.2f}" for _ in bits) + " |")
    order = [("PTQ", "-"), ("PTQ", "uniform"), ("PTQ", "thr"), ("QAT", "-"), ("SQUAT", "uniform"), ("SQUAT", "thr"),
             ("QAT+SQUAT", "uniform"), ("QAT+SQUAT", "thr")]
    for method, kind in order:
        cells = []
        for b in bits:
            r = next((r for r in rows if r["method"] == method and r["states"] == kind and r["bits"] == b), None)  # type: ignore[union-attr]
            if r is None:
                cells.append("")
                continue
            c = f"{100 * r['acc']:.2f}"
            if r["clipped"] is not None:
                c += f" ({100 * r['clipped']:.1f} % clip)"
            cells.append(c)
        label = {"-": "weights only" if method in ("PTQ", "QAT") else "-"}.get(kind, kind)
        lines.append(f"| {method} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_state_levels(result: dict[str, object], path: str | os.PathLike[str]) -> Path:
    """Plot the uniform and threshold-centred level placements over the float membrane-potential histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ..fileio import atomic_path

    mem = result["mem_sample"].flatten().numpy()  # type: ignore[union-attr]
    sr = result["state_range"]
    cfg = result["config"]
    bits = list(cfg["bits"])  # type: ignore[index]
    fig, axes = plt.subplots(len(bits), 2, figsize=(11, 2.7 * len(bits) + 0.9), squeeze=False, sharex=True)
    lo = min(float(mem.min()), -sr["threshold"] * (1 + sr["lower_limit"]))  # type: ignore[index]
    hi = max(float(mem.max()), sr["threshold"] * (1 + sr["upper_limit"]))  # type: ignore[index]
    for i, b in enumerate(bits):
        for j, kind in enumerate(STATE_KINDS):
            ax = axes[i][j]
            ax.hist(mem, bins=200, range=(lo, hi), color="0.6", log=True)
            mult = {int(k): v for k, v in cfg["thr_multiplier"].items()}.get(b) if kind == "thr" else None  # type: ignore[index]
            q = state_quantizer(kind, b, sr["threshold"], sr["lower_limit"], sr["upper_limit"], mult)  # type: ignore[index]
            color = "tab:red" if kind == "thr" else "tab:blue"
            for v in q.levels.tolist():
                ax.axvline(v, color=color, lw=0.6, alpha=0.8)
            ax.axvline(sr["threshold"], color="k", ls="--", lw=1)  # type: ignore[index]
            ax.set_title(f"{b}-bit {'threshold-centred' if kind == 'thr' else 'uniform'} ({len(q.levels)} levels)", fontsize=9)
            if j == 0:
                ax.set_ylabel("samples (log scale)")
            if i == len(bits) - 1:
                ax.set_xlabel("membrane potential (float network)")
    handles = [Patch(color="0.6", label="float membrane potentials"),
               Line2D([], [], color="tab:blue", lw=1, label="uniform state levels"),
               Line2D([], [], color="tab:red", lw=1, label="threshold-centred state levels"),
               Line2D([], [], color="k", ls="--", lw=1, label=f"threshold ({sr['threshold']:g})")]  # type: ignore[index]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"SNN state levels: Randman ({cfg['nb_classes']} classes), recurrent SNN with {cfg['hidden']} hidden "
                 f"neurons, seed {cfg['seed']}", fontsize=10)  # type: ignore[index]
    fig.tight_layout(rect=(0, 0.06 if len(bits) < 3 else 0.04, 1, 1))
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def save_report(result: dict[str, object], folder: str | os.PathLike[str], plot: bool = True) -> dict[str, Path]:
    """Write ``ablation.md``, ``ablation.json`` and (if ``plot``) ``state_levels.png`` into ``folder``, tables first."""
    from ..fileio import write_text

    folder = Path(folder)
    out: dict[str, Path] = {}
    md = folder / "ablation.md"
    write_text(md, format_table(result) + f"\n\nwall time: {result['wall_s']:.1f} s\n")
    out["table"] = md
    js = folder / "ablation.json"
    write_text(js, json.dumps({k: v for k, v in result.items() if k != "mem_sample"}, indent=1, default=float) + "\n")
    out["json"] = js
    if plot:
        out["plot"] = plot_state_levels(result, folder / "state_levels.png")
    return out
