"""``fit``: the training configuration for ordinary (and QAT) models, seeded and deterministic on one machine.

``fit`` trains any model (float, or after ``prepare_qat``: the optimizer updates
the float shadow weights and learned scales) with Adam and a cosine schedule on
the one loop of :mod:`lowbit.loop`; PACT's ``lambda * alpha^2`` is added when
``pact_lambda > 0``. ``checkpoint=`` writes a ``lowbit.save`` file after every
epoch (float shadow weights *and* their quantized QTensors for a QAT model).

Progress follows :mod:`lowbit.progress`: a bar on a terminal, one line per epoch
(``train 3/15: loss 0.123, test 97.2 %, 1.4 s``) in logs, nothing when ``progress=False``.
"""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .loop import Hook, LoopState, evaluate, run_epochs
from .nn.act import pact_penalty

__all__ = ["seed_everything", "fit", "evaluate", "History", "progress_enabled", "PactPenalty", "EvalAccuracy", "Checkpoint"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the same seed gives the same numbers on the same machine)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress_enabled() -> bool:
    """True when a progress bar would be shown (a terminal, not CI); see :func:`lowbit.progress.resolved_mode`."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("true", "1")


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


class PactPenalty(Hook):
    """Adds ``lam * sum(alpha^2)`` over the model's PACT clips to every batch's loss."""

    def __init__(self, model: nn.Module, lam: float) -> None:
        self.model, self.lam = model, lam

    def extra_loss(self, s: LoopState) -> torch.Tensor | None:
        """The PACT penalty, on the loss's device."""
        if self.lam <= 0:
            return None
        pen = pact_penalty(self.model)
        return self.lam * pen.to(s.out.device) if isinstance(s.out, torch.Tensor) else self.lam * pen


class EvalAccuracy(Hook):
    """After every epoch: the accuracy (percent) on ``loader``, into ``history[key]`` and the progress line."""

    def __init__(self, model: nn.Module, loader: object, key: str = "accuracy") -> None:
        self.model, self.loader, self.key = model, loader, key

    def on_epoch_end(self, s: LoopState) -> None:
        """Evaluate and record."""
        acc = evaluate(self.model, self.loader)
        s.history.setdefault(self.key, []).append(acc)
        s.notes.append(f"test {acc:.1f} %")


class Checkpoint(Hook):
    """After every epoch: ``lowbit.save`` the model to ``path`` with the epoch number in its metadata."""

    def __init__(self, model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
        self.model, self.path, self.metadata = model, path, dict(metadata or {})

    def on_epoch_end(self, s: LoopState) -> None:
        """Write the checkpoint (atomically: a crash mid-write keeps the previous epoch's file)."""
        from .api import save

        save(self.model, self.path, metadata={**self.metadata, "lowbit.epoch": str(s.epoch + 1)})


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
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(train)))
    hooks: list[Hook] = [PactPenalty(model, pact_lambda)] if pact_lambda > 0 else []
    if test is not None:
        hooks.append(EvalAccuracy(model, test))
    if checkpoint is not None:
        hooks.append(Checkpoint(model, checkpoint))
    s = run_epochs(model, train, epochs=epochs, optimizer=opt, scheduler=sched, hooks=hooks, desc=desc, progress=progress)
    return History(loss=s.history["loss"], accuracy=s.history.get("accuracy", []), step_time=s.step_time, steps=s.steps)
