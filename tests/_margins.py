"""Margins for accuracy checks that hold on every CPU: how far two accuracies may differ by chance.

Another CPU rounds floats differently, trains another model and so moves every accuracy a
little; a check that two models are "as accurate" can only ask that the difference is
not larger than the test set can tell apart. Both models are scored on the same samples, so
only the samples where exactly one is right count (McNemar): with d such samples out of n,
the difference of the two accuracies has a standard error of at most sqrt(d) / n.
"""
from __future__ import annotations

import math

import torch


def paired_margin(correct_a: torch.Tensor, correct_b: torch.Tensor, n_se: float = 3.0) -> float:
    """``n_se`` standard errors (a fraction, not %) of the accuracy difference of two models on the same samples."""
    a, b = torch.as_tensor(correct_a).bool().flatten(), torch.as_tensor(correct_b).bool().flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"correct_a and correct_b must be non-empty and the same length, got {a.numel()} and {b.numel()}")
    return n_se * math.sqrt(int((a != b).sum())) / a.numel()


@torch.no_grad()
def correct(model: torch.nn.Module, loader: object) -> torch.Tensor:
    """Per-sample correctness (bool) of an image classifier over a loader of (x, y), in eval mode."""
    was = model.training
    model.eval()
    out = torch.cat([model(x).argmax(1) == y for x, y in loader])  # type: ignore[attr-defined]
    model.train(was)
    return out
