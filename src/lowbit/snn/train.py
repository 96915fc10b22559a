"""Training by backpropagation through time (CPU), batch-first [batch, time, features].

:func:`train` runs Adam on the cross-entropy of the readout. When the model
quantizes weights, its forward pass refits the scale and fake-quantizes the
float shadow weights once per batch, and the optimizer steps the shadow weights
(mlGeNN's ``gBack``), so there is no one-batch lag between the two.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ..loop import Hook, LoopState, count_correct, run_epochs

__all__ = ["train", "evaluate", "predict", "record_membrane", "check_training", "shuffled_batches", "Validate"]


def _check_xy(x: Tensor, y: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{name} must be a tensor [samples, time, features], got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(y, Tensor) or y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"labels must be a 1-D tensor with one label per sample of {name} ({len(x)})")


def check_training(x: Tensor, y: Tensor, epochs: object, batch_size: object, lr: object) -> None:
    """The checks every SNN training loop makes on its data and hyper-parameters (a ValueError naming the argument)."""
    _check_xy(x, y)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")


_check_training = check_training  # the earlier private name


def shuffled_batches(x: Tensor, y: Tensor, batch_size: int, seed: int) -> Callable[[int], Iterator[tuple[Tensor, Tensor]]]:
    """Per epoch, ``(x, y)`` batches in a fresh permutation drawn from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def epoch(_: int) -> Iterator[tuple[Tensor, Tensor]]:
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch_size):
            idx = perm[s : s + batch_size]
            yield x[idx], y[idx]

    return epoch


class Validate(Hook):
    """After every epoch: the accuracy (fraction) on ``(x, y)`` into ``history["val_acc"]``, then ``on_epoch(epoch, last values)``."""

    def __init__(self, x: Tensor | None, y: Tensor | None, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                 keys: tuple[str, ...] = ("loss", "train_acc", "val_acc")) -> None:
        self.x, self.y, self.on_epoch, self.keys = x, y, on_epoch, keys

    def on_epoch_end(self, s: LoopState) -> None:
        """Evaluate (when validation data was given) and call back."""
        if self.x is not None and self.y is not None:
            acc = evaluate(s.model, self.x, self.y)
            s.history.setdefault("val_acc", []).append(acc)
            s.notes.append(f"val {100 * acc:.1f} %")
        if self.on_epoch is not None:
            self.on_epoch(s.epoch, {k: v[-1] for k, v in s.history.items() if k in self.keys and v})


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = False,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` (logits from [batch, time, features]) for ``epochs``; returns per-epoch loss, accuracy and step time."""
    check_training(x, y, epochs, batch_size, lr)
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    s = run_epochs(model, shuffled_batches(x, y, batch_size, seed), epochs=epochs, optimizer=opt, accuracy=True,
                   hooks=[Validate(x_val, y_val, on_epoch, keys=("loss", "train_acc", "val_acc", "step_s"))],
                   desc="snn", progress=progress)
    h = s.history
    return {"loss": h["loss"], "train_acc": h["train_acc"], "val_acc": h.get("val_acc", []), "step_s": h["step_s"]}


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted class of every sample of ``x`` [samples, time, features]."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a tensor [samples, time, features], got {getattr(x, 'shape', type(x).__name__)}")
    was = model.training
    model.eval()
    out = torch.cat([model(x[s : s + batch_size]).argmax(1) for s in range(0, len(x), batch_size)])
    model.train(was)
    return out


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Accuracy as a *fraction* correct of ``model`` on ``(x, y)`` (the compatible form; :func:`lowbit.loop.evaluate` gives percent)."""
    _check_xy(x, y)
    correct, total = count_correct(model, x, y, batch_size=batch_size)
    return correct / total


@torch.no_grad()
def record_membrane(model: nn.Module, x: Tensor, layer: int = 0, batch_size: int = 512) -> Tensor:
    """Membrane potentials of hidden ``layer`` over ``x``: [samples, time, neurons] (needs ``model.run``)."""
    was = model.training
    model.eval()
    out = torch.cat([model.run(x[s : s + batch_size], record=True)["mem"][layer] for s in range(0, len(x), batch_size)])
    model.train(was)
    return out
