"""Training loop for :class:`~lowbit.snn.eventprop.EventPropSNN`: Adam (or SGD) on cross-entropy or MSE of the readout.

With weight quantization on, every forward pass (every batch) refits the scale to the
float shadow weights and uses ``Q(w)``; the optimizer steps the shadow weights. The
forward weights are thus always those of the current shadow weights -- in mlGeNN too
(its ``g <- Q(gBack)`` runs at the start of every batch). What mlGeNN delays is the
*gradient*: the backward pass of batch ``n`` runs during the forward pass of batch
``n + 1``, so the update at the end of batch ``n`` applies batch ``n - 1``'s gradient.
``gradient_timing="mlgenn"`` on the model reproduces that (:func:`delay_gradients`): the
first step changes nothing, step ``k + 1`` applies the gradient of batch ``k``, and the
last batch's gradient waits for the next call (validation sees weights one update behind,
as mlGeNN's). ``"same_batch"`` (default) applies each gradient at its own step.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import torch
from torch import Tensor

from .eventprop import EP_LOSSES, ERROR_ROUTINGS, GRADIENT_TIMINGS, EventPropSNN, eventprop_loss
from ..loop import run_epochs
from .train import Validate, check_training, evaluate, shuffled_batches

__all__ = ["train_eventprop", "eventprop_ablation", "delay_gradients", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "sgd")


def delay_gradients(optimizer: torch.optim.Optimizer, pending: dict | None = None) -> object:
    """Make ``optimizer`` apply every gradient one step late (mlGeNN's EventProp timing); returns the hook's handle.

    Before each step the gradients just computed are put aside and the previous step's put in
    their place (none before the first step: parameters without a gradient are not stepped).
    ``pending`` holds the gradients put aside (parameter -> gradient); pass the same dict to
    carry them across optimizers (a new one per call of a training function).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    late: dict = {} if pending is None else pending

    def swap(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                now = p.grad
                p.grad = late.pop(p, None)
                if now is not None:
                    late[p] = now  # zero_grad(set_to_none) only drops p.grad's reference: no copy needed

    return optimizer.register_step_pre_hook(swap)


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
    optimizer: str = "adam",
) -> dict[str, list[float]]:
    """Train ``model`` for ``epochs``; returns per-epoch loss, train accuracy, val accuracy and epoch seconds.

    ``loss`` defaults to ``ttfs`` for a first-spike (``readout="ttfs"``) model and to ``ce`` otherwise.
    ``optimizer``: ``adam`` (mlGeNN's default) or plain ``sgd``. With the model's
    ``gradient_timing="mlgenn"`` each gradient is applied one step late; the last one is kept
    on the model for its next call (as mlGeNN's carries into the next epoch).
    """
    if not isinstance(model, EventPropSNN):
        raise TypeError(f"model must be an EventPropSNN, got {type(model).__name__}")
    check_training(x, y, epochs, batch_size, lr)
    if loss is None:  # the first-spike readout has its own loss
        loss = "ttfs" if model.cfg.ttfs else "ce"
    if loss not in EP_LOSSES:
        raise ValueError(f"loss must be one of {EP_LOSSES}, got {loss!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    if model.gradient_timing == "mlgenn":  # the gradient one batch late, carried across calls on the model
        delay_gradients(opt, model.__dict__.setdefault("_late_gradients", {}))
    # Each forward pass quantizes the current shadow weights; the adjoint pass is an autograd
    # function, so the loop's ordinary backward runs it.
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
    scope: str = "connection",
    batch_size: int = 32,
    lr: float = 1e-2,
    qat_lr: float = 1e-3,
    readout: str = "exp",
    log: Callable[[str], None] | None = None,
    error_routing: str = "quantized",
    gradient_timing: str = "same_batch",
) -> dict[str, object]:
    """Randman with EventProp: float accuracy, then PTQ and QAT (fine-tuned shadow weights) per bit width.

    ``readout`` is the output's: ``exp`` (default), ``mean``, ``sum``, ``max``, ``last`` or ``ttfs`` (first spike).
    ``scope`` defaults to mlGeNN's EventProp one (per connection); ``error_routing`` and
    ``gradient_timing`` (see :class:`EventPropSNN`) apply to the QAT runs.
    """
    from ..data.spiking import randman_raster, split

    if not bits or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in bits):
        raise ValueError(f"bits must be a non-empty list of ints >= 2, got {bits!r}")
    if error_routing not in ERROR_ROUTINGS:
        raise ValueError(f"error_routing must be one of {ERROR_ROUTINGS}, got {error_routing!r}")
    if gradient_timing not in GRADIENT_TIMINGS:
        raise ValueError(f"gradient_timing must be one of {GRADIENT_TIMINGS}, got {gradient_timing!r}")
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
        ptq.error_routing, ptq.gradient_timing = error_routing, gradient_timing
        train_eventprop(ptq, xtr, ytr, epochs=qat_epochs, batch_size=batch_size, lr=qat_lr, seed=seed + 1)
        rows.append({"variant": "QAT", "bits": b, "acc": evaluate(ptq, xte, yte)})
        say(f"{b}-bit: PTQ {100 * rows[-2]['acc']:.1f}%, QAT {100 * rows[-1]['acc']:.1f}%")
    lines = ["| trainer | weights | accuracy (%) |", "|---|---|---|"]
    for r in rows:
        w = "float" if r["bits"] == 32 else f"{r['variant']} fxp{r['bits']}:p99 ({scope})"
        lines.append(f"| EventProp ({readout} readout) | {w} | {100 * float(r['acc']):.1f} |")  # type: ignore[arg-type]
    return {"rows": rows, "table": "\n".join(lines)}
