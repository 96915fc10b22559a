"""One training loop (epochs of batches, one optimizer step each) with hooks, and one ``evaluate``.

Every trainer in lowbit is a configuration of :func:`run_epochs`:

- :func:`lowbit.train.fit` -- Adam + cosine decay, cross-entropy; hooks add PACT's
  penalty, the test accuracy and a checkpoint after every epoch;
- :func:`lowbit.snn.train` / ``train_eventprop`` -- shuffled tensor batches, train
  accuracy, a validation hook (EventProp's adjoint pass is an autograd function, so
  the ordinary ``loss.backward()`` runs it);
- weight sharing (``algorithms``) -- an extra loss term and an after-step clamp;
- :mod:`lowbit.distributed` -- the same loop on a DDP-wrapped model over sharded
  batches; its hooks reduce the loss across ranks and let rank 0 alone write.

The loop knows nothing of quantization: a QAT model refreshes its quantized weights
in its own forward pass (once per batch). It imports nothing above ``torch`` and
:mod:`lowbit.progress`, so every layer may use it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .progress import note, track

__all__ = ["Hook", "LoopState", "run_epochs", "evaluate", "count_correct"]

Batches = Union[Iterable[Any], Callable[[int], Iterable[Any]]]


@dataclass
class LoopState:
    """What hooks see (and may change): the current epoch and batch, its loss, and the history so far.

    ``history`` holds one entry per finished epoch: ``loss`` (sample-weighted mean of
    the optimised loss), ``train_acc`` (fraction, when the loop counts it),
    ``epoch_s`` (seconds of the batch loop), ``steps`` and ``step_s`` (seconds per step);
    hooks add their own keys.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    epoch: int = 0
    x: Any = None
    y: Any = None
    out: Any = None
    loss: Tensor | None = None
    loss_sum: float = 0.0
    samples: int = 0
    correct: float = 0.0
    steps: int = 0
    step_time: float = 0.0
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"loss": [], "train_acc": [], "epoch_s": [], "steps": [], "step_s": []}
    )
    notes: list[str] = field(default_factory=list)


class Hook:
    """A piece of a training configuration; override only the moments it needs (all default to nothing)."""

    def on_epoch_start(self, s: LoopState) -> None:
        """Before the epoch's first batch."""

    def on_batch_start(self, s: LoopState) -> None:
        """Before the forward pass (``s.x``, ``s.y`` are set and may be replaced)."""

    def extra_loss(self, s: LoopState) -> Tensor | None:
        """A term added to the loss after the forward pass (PACT's penalty, a regulariser), or None."""
        return None

    def on_step_end(self, s: LoopState) -> None:
        """After the optimizer (and scheduler) step."""

    def on_epoch_end(self, s: LoopState) -> None:
        """After the epoch's history entry is written: evaluate, checkpoint, add ``s.notes`` for the progress line."""


def _check_epochs(epochs: object) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    return epochs


def run_epochs(
    model: Callable[[Any], Any],
    batches: Batches,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], Tensor] = F.cross_entropy,
    scheduler: Any = None,
    hooks: Sequence[Hook] = (),
    accuracy: bool = False,
    desc: str = "train",
    progress: bool | None = None,
) -> LoopState:
    """Train ``model`` on ``(x, y)`` batches for ``epochs``; ``batches`` is re-iterated, or called with the epoch, each epoch."""
    _check_epochs(epochs)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    hooks = tuple(hooks)
    s = LoopState(model=model, optimizer=optimizer, epochs=epochs)  # type: ignore[arg-type]
    for epoch in range(epochs):
        s.epoch, s.loss_sum, s.samples, s.correct, s.notes = epoch, 0.0, 0, 0.0, []
        if isinstance(model, nn.Module):
            model.train()
        for h in hooks:
            h.on_epoch_start(s)
        it = batches(epoch) if callable(batches) and not hasattr(batches, "__iter__") else batches
        total = len(it) if hasattr(it, "__len__") else None  # type: ignore[arg-type]
        steps0, t_epoch = s.steps, time.perf_counter()
        for x, y in track(it, total=total, desc=f"{desc} {epoch + 1}/{epochs}", progress=progress):  # type: ignore[arg-type]
            s.x, s.y = x, y
            for h in hooks:
                h.on_batch_start(s)
            t0 = time.perf_counter()
            s.out = model(s.x)
            loss = loss_fn(s.out, s.y)
            for h in hooks:
                extra = h.extra_loss(s)
                if extra is not None:
                    loss = loss + extra
            s.loss = loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            s.step_time += time.perf_counter() - t0
            s.steps += 1
            for h in hooks:
                h.on_step_end(s)
            n = len(s.y)
            s.loss_sum += float(loss.detach()) * n
            s.samples += n
            if accuracy:
                s.correct += float((s.out.argmax(1) == s.y).sum())
        seconds, steps = time.perf_counter() - t_epoch, s.steps - steps0
        s.history["epoch_s"].append(seconds)
        s.history["steps"].append(float(steps))
        s.history["step_s"].append(seconds / max(steps, 1))
        s.history["loss"].append(s.loss_sum / max(1, s.samples))
        if accuracy:
            s.history["train_acc"].append(s.correct / max(1, s.samples))
        for h in hooks:
            h.on_epoch_end(s)
        parts = [f"loss {s.history['loss'][-1]:.4g}", *s.notes, f"{s.history['epoch_s'][-1]:.1f} s"]
        note(f"{desc} {epoch + 1}/{epochs}: {', '.join(parts)}", progress=progress)
    return s


def _model_device(model: nn.Module) -> torch.device | None:
    p = next(iter(model.parameters()), None)
    return None if p is None else p.device


@torch.no_grad()
def count_correct(model: nn.Module, data: Any, y: Tensor | None = None, *, batch_size: int = 512) -> tuple[int, int]:
    """(correct top-1 predictions, samples) of ``model`` in eval mode over a loader of ``(x, y)`` batches or tensors ``data, y``."""
    if y is not None:
        if not isinstance(data, Tensor) or data.dim() < 1:
            raise ValueError(f"with y given, data must be an input tensor [samples, ...], got {type(data).__name__}")
        if not isinstance(y, Tensor) or y.dim() != 1 or len(y) != len(data):
            raise ValueError(f"y must be a 1-D tensor with one label per sample of data ({len(data)})")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        batches: Iterable[Any] = [(data[s : s + batch_size], y[s : s + batch_size]) for s in range(0, len(data), batch_size)]
    elif hasattr(data, "__iter__") and not isinstance(data, Tensor):
        batches = data
    else:
        raise TypeError(f"data must be a loader of (inputs, labels) batches, or an input tensor with y, got {type(data).__name__}")
    device = _model_device(model)
    was = model.training
    model.eval()
    correct = total = 0
    try:
        for xb, yb in batches:
            if device is not None and isinstance(xb, Tensor):
                xb = xb.to(device)
            correct += int((model(xb).argmax(1).to(yb.device) == yb).sum())
            total += int(yb.numel())
    finally:
        model.train(was)
    if total == 0:
        raise ValueError("the data gave no samples")
    return correct, total


def evaluate(model: nn.Module, data: Any, y: Tensor | None = None, *, batch_size: int = 512) -> float:
    """Top-1 accuracy in percent, in eval mode, over a loader of ``(x, y)`` batches or over tensors ``data, y``."""
    correct, total = count_correct(model, data, y, batch_size=batch_size)
    return 100.0 * correct / total

