"""Training by backpropagation through time (CPU), batch-first [batch, time, features].

:func:`train` runs Adam on the cross-entropy of the readout. When the model
quantizes weights, its forward pass refits the scale and fake-quantizes the
float shadow weights once per batch, and the optimizer steps the shadow weights
(mlGeNN's ``gBack``), so there is no one-batch lag between the two.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["train", "evaluate", "predict", "record_membrane"]


def _check_xy(x: Tensor, y: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{name} must be a tensor [samples, time, features], got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(y, Tensor) or y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"labels must be a 1-D tensor with one label per sample of {name} ({len(x)})")


def _check_training(x: Tensor, y: Tensor, epochs: object, batch_size: object, lr: object) -> None:
    """The checks every SNN training loop makes on its data and hyper-parameters."""
    _check_xy(x, y)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")


def _progress(it, enabled: bool, **kw):  # type: ignore[no-untyped-def]
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, **kw)


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
    _check_training(x, y, epochs, batch_size, lr)
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"loss": [], "train_acc": [], "val_acc": [], "step_s": []}
    n = len(y)
    for ep in _progress(range(epochs), progress, desc="epochs"):
        model.train()
        perm = torch.randperm(n, generator=g)
        tot_loss = tot_ok = 0.0
        t0 = time.perf_counter()
        steps = 0
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += float(loss.detach()) * len(idx)
            tot_ok += float((logits.argmax(1) == y[idx]).sum())
            steps += 1
        hist["step_s"].append((time.perf_counter() - t0) / max(steps, 1))
        hist["loss"].append(tot_loss / n)
        hist["train_acc"].append(tot_ok / n)
        if x_val is not None and y_val is not None:
            hist["val_acc"].append(evaluate(model, x_val, y_val))
        if on_epoch is not None:
            on_epoch(ep, {k: v[-1] for k, v in hist.items() if v})
    return hist


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
    """Accuracy (fraction correct) of ``model`` on ``(x, y)``."""
    _check_xy(x, y)
    return float((predict(model, x, batch_size) == y).float().mean())


@torch.no_grad()
def record_membrane(model: nn.Module, x: Tensor, layer: int = 0, batch_size: int = 512) -> Tensor:
    """Membrane potentials of hidden ``layer`` over ``x``: [samples, time, neurons] (needs ``model.run``)."""
    was = model.training
    model.eval()
    out = torch.cat([model.run(x[s : s + batch_size], record=True)["mem"][layer] for s in range(0, len(x), batch_size)])
    model.train(was)
    return out
