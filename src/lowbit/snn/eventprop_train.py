"""Training loop for :class:`~lowbit.snn.eventprop.EventPropSNN`: Adam on cross-entropy or MSE of the readout.

With weight quantization on, every forward pass (every batch) refits the scale to the
float shadow weights and uses ``Q(w)``; the optimizer steps the shadow weights. The
quantized weights are therefore always those of the current shadow weights, without
mlGeNN's one-batch lag.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import torch
from torch import Tensor

from .eventprop import EP_LOSSES, EventPropSNN, eventprop_loss
from ..loop import run_epochs
from .train import Validate, check_training, evaluate, shuffled_batches

__all__ = ["train_eventprop", "eventprop_ablation"]


def train_eventprop(
    model: EventPropSNN,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-2,
    loss: str | None = None,
    seed: int = 0,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` for ``epochs``; returns per-epoch loss, train accuracy, val accuracy and epoch seconds.

    ``loss`` defaults to ``ttfs`` for a first-spike (``readout="ttfs"``) model and to ``ce`` otherwise.
    """
    if not isinstance(model, EventPropSNN):
        raise TypeError(f"model must be an EventPropSNN, got {type(model).__name__}")
    check_training(x, y, epochs, batch_size, lr)
    if loss is None:  # the first-spike readout has its own loss
        loss = "ttfs" if model.cfg.ttfs else "ce"
    if loss not in EP_LOSSES:
        raise ValueError(f"loss must be one of {EP_LOSSES}, got {loss!r}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Each forward pass quantizes the current shadow weights (no lag); the adjoint pass is
    # an autograd function, so the loop's ordinary backward runs it.
    st = run_epochs(model, shuffled_batches(x, y, batch_size, seed), epochs=epochs, optimizer=opt, accuracy=True,
                    loss_fn=lambda out, yb: eventprop_loss(out, yb, loss), hooks=[Validate(x_val, y_val)],
                    desc="eventprop", progress=False)
    h = st.history
    return {"loss": h["loss"], "train_acc": h["train_acc"], "val_acc": h.get("val_acc", []), "epoch_s": h["epoch_s"]}


def eventprop_ablation(
    *,
    seed: int = 0,
    bits: Sequence[int] = (8, 4, 2),
    epochs: int = 12,
    qat_epochs: int = 4,
    hidden: int = 128,
    recurrent: bool = False,
    nb_units: int = 50,
    nb_steps: int = 30,
    nb_samples: int = 500,
    nb_classes: int = 10,
    dim_manifold: int = 2,
    alpha: float = 2.0,
    scope: str = "population",
    batch_size: int = 32,
    lr: float = 1e-2,
    qat_lr: float = 1e-3,
    readout: str = "exp",
    log: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Randman with EventProp: float accuracy, then PTQ and QAT (fine-tuned shadow weights) per bit width.

    ``readout`` is the output's: ``exp`` (default), ``mean``, ``sum``, ``max``, ``last`` or ``ttfs`` (first spike).
    """
    from ..data.spiking import randman_raster, split

    if not bits or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in bits):
        raise ValueError(f"bits must be a non-empty list of ints >= 2, got {bits!r}")
    x, y = randman_raster(nb_classes=nb_classes, nb_units=nb_units, nb_steps=nb_steps, nb_samples=nb_samples,
                          dim_manifold=dim_manifold, alpha=alpha, seed=seed)
    xtr, ytr, xte, yte = split(x, y, 0.2, seed=seed)
    say = log or (lambda s: None)
    ttfs = readout == "ttfs"  # a spiking output needs a positive drive to fire at all
    fp = EventPropSNN(nb_units, hidden, nb_classes, recurrent=recurrent, init_scale=1.0, init_mean=0.05 if ttfs else 0.0,
                      out_init_scale=1.0 if ttfs else 0.2, readout=readout, seed=seed)
    t0 = time.perf_counter()
    train_eventprop(fp, xtr, ytr, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    rows = [{"variant": "float", "bits": 32, "acc": evaluate(fp, xte, yte)}]
    say(f"float: {100 * rows[0]['acc']:.1f}% ({time.perf_counter() - t0:.0f} s)")
    for b in bits:
        ptq = copy.deepcopy(fp).quantize_weights(f"fxp{b}:p99", scope=scope)
        rows.append({"variant": "PTQ", "bits": b, "acc": evaluate(ptq, xte, yte)})
        train_eventprop(ptq, xtr, ytr, epochs=qat_epochs, batch_size=batch_size, lr=qat_lr, seed=seed + 1)
        rows.append({"variant": "QAT", "bits": b, "acc": evaluate(ptq, xte, yte)})
        say(f"{b}-bit: PTQ {100 * rows[-2]['acc']:.1f}%, QAT {100 * rows[-1]['acc']:.1f}%")
    lines = ["| trainer | weights | accuracy (%) |", "|---|---|---|"]
    for r in rows:
        w = "float" if r["bits"] == 32 else f"{r['variant']} fxp{r['bits']}:p99 ({scope})"
        lines.append(f"| EventProp ({readout} readout) | {w} | {100 * float(r['acc']):.1f} |")  # type: ignore[arg-type]
    return {"rows": rows, "table": "\n".join(lines)}
