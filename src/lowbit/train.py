"""Training and evaluation loop: seeded, deterministic on one machine, with a progress bar.

``fit`` trains any model (float, or after ``prepare_qat``: the optimizer updates
the float shadow weights and learned scales) with Adam and a cosine schedule;
PACT's ``lambda * alpha^2`` is added when ``pact_lambda > 0``. ``checkpoint=``
writes a ``lowbit.save`` file after every epoch (float shadow weights *and*
their quantized QTensors for a QAT model).

The progress bar (tqdm, when installed) is off when stderr is not a terminal
or when ``CI=true``.
"""
from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .nn.act import pact_penalty

__all__ = ["seed_everything", "fit", "evaluate", "History", "progress_enabled"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the same seed gives the same numbers on the same machine)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress_enabled() -> bool:
    """True when a progress bar should be shown (a terminal, not CI)."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("true", "1")


def _bar(it: Iterable, total: int, desc: str, show: bool | None) -> Iterable:
    show = progress_enabled() if show is None else show
    if not show:
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, total=total, desc=desc, leave=False)


@dataclass
class History:
    """Per-epoch training loss and (if a test loader was given) accuracy; wall time of the steps."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    step_time: float = 0.0
    steps: int = 0

    @property
    def time_per_step(self) -> float:
        """Mean seconds per optimizer step."""
        return self.step_time / max(1, self.steps)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in percent, in eval mode."""
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was)
    if total == 0:
        raise ValueError("loader gave no samples")
    return 100.0 * correct / total


def fit(
    model: nn.Module,
    train: DataLoader,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    pact_lambda: float = 0.0,
    test: DataLoader | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> History:
    """Train with Adam + cosine decay and cross-entropy; return the loss (and accuracy) per epoch."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (a converted model cannot be trained)")
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    total = epochs * len(train)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    hist = History()
    model.train()
    for epoch in range(epochs):
        run_loss, n = 0.0, 0
        for x, y in _bar(train, len(train), f"{desc} {epoch + 1}/{epochs}", progress):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            if pact_lambda > 0:
                loss = loss + pact_lambda * pact_penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist.step_time += time.perf_counter() - t0
            hist.steps += 1
            run_loss += float(loss.detach()) * len(y)
            n += len(y)
        hist.loss.append(run_loss / max(1, n))
        if test is not None:
            hist.accuracy.append(evaluate(model, test))
        if checkpoint is not None:
            from .api import save

            save(model, checkpoint, metadata={"lowbit.epoch": str(epoch + 1)})
    return hist
