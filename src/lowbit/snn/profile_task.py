"""``lowbit snn --profile loihi2|xylo``: float, 8-bit QAT and a chip profile on the Randman task, with the integer check.

:func:`run_profile_task` trains the task's float network, the unconstrained 8-bit QAT network
(``fxp8:p99``, the ablation's QAT row) and the profiled network (PTQ, then the profile's recipe
:func:`lowbit.snn.profiles.profile_qat`), runs the integer-only simulator on the test set and
checks that its spikes equal the fake-quantized network's, every neuron at every step. It writes
``profile_<name>.md`` / ``.json`` and the profiled network (``snn_<name>.lowbit``, which
``lowbit.load`` reads back with its profile) under ``out``.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.spiking import randman_raster, split
from .ablation import AblationConfig
from .intsim import compile_int, simulate
from .network import SNN
from .profiles import PROFILES, apply_profile, profile_qat
from .train import evaluate, train

__all__ = ["run_profile_task"]


def run_profile_task(cfg: AblationConfig, profile: str, out: str | Path | None = None,
                     log: Callable[[str], None] = print) -> dict[str, object]:
    """Accuracy of float / 8-bit QAT / the profile (PTQ, QAT) on ``cfg``'s task and the integer simulator check; logs the table."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    cfg.validate()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    x, y = randman_raster(cfg.nb_classes, cfg.nb_units, cfg.nb_steps, 1.0, cfg.dim_manifold, 1, cfg.nb_samples,
                          cfg.alpha, True, cfg.seed)
    xtr, ytr, xte, yte = split(x, y, 0.2, seed=cfg.seed)
    fp = SNN(cfg.nb_units, cfg.hidden, cfg.nb_classes, recurrent=cfg.recurrent, beta=cfg.beta, seed=cfg.seed)
    train(fp, xtr, ytr, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    acc = {"float": evaluate(fp, xte, yte)}
    log(f"float: {100 * acc['float']:.2f} %  ({time.perf_counter() - t0:.0f} s)")
    q8 = copy.deepcopy(fp).quantize_weights(cfg.weight_format.format(bits=8), cfg.scope)
    train(q8, xtr, ytr, epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr, seed=cfg.seed + 1)
    acc["QAT 8-bit"] = evaluate(q8, xte, yte)
    log(f"QAT 8-bit: {100 * acc['QAT 8-bit']:.2f} %  ({time.perf_counter() - t0:.0f} s)")
    net = apply_profile(copy.deepcopy(fp), profile)
    acc[f"{profile} PTQ"] = evaluate(net, xte, yte)
    profile_qat(net, profile, xtr, ytr, epochs=cfg.qat_epochs, lr=cfg.qat_lr, adapt_epochs=2 * cfg.qat_epochs,
                adapt_lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed + 1)
    acc[f"{profile} QAT"] = evaluate(net, xte, yte)
    log(f"{profile}: PTQ {100 * acc[f'{profile} PTQ']:.2f} %, QAT {100 * acc[f'{profile} QAT']:.2f} %  "
        f"({time.perf_counter() - t0:.0f} s)")
    with torch.no_grad():
        r = net.run(xte, record=True)
    s = simulate(compile_int(net), xte)
    same = all(np.array_equal(a.numpy().astype(np.int64), b) for a, b in zip(r["spikes"], s["spikes"]))  # type: ignore[arg-type]
    acc["integer simulator"] = int((torch.as_tensor(s["pred"]) == yte).sum()) / len(yte)  # as evaluate counts
    lines = ["| network | accuracy |", "|---|---|"] + [f"| {k} | {100 * v:.2f} % |" for k, v in acc.items()]
    lines.append(f"| integer simulator spikes == fake-quant spikes (test set, every neuron and step) | "
                 f"{'yes' if same else 'NO'} |")
    table = "\n".join(lines)
    log("")
    log(table)
    result: dict[str, object] = {"profile": profile, "seed": cfg.seed, "acc": acc, "spikes_identical": same,
                                 "wall_s": time.perf_counter() - t0, "table": table}
    if out is not None:
        from ..fileio import write_text
        from .verbs import SpikingVerbs

        out = Path(out)
        files = {"table": out / f"profile_{profile}.md", "json": out / f"profile_{profile}.json",
                 "model": out / f"snn_{profile}.lowbit"}
        write_text(files["table"], f"# lowbit snn --profile {profile} (Randman, seed {cfg.seed})\n\n{table}\n")
        write_text(files["json"], json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        SpikingVerbs().save(net, files["model"])
        result["files"] = {k: str(v) for k, v in files.items()}
        log(f"report: {', '.join(str(v) for v in files.values())}")
    return result
