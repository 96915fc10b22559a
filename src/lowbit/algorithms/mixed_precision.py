"""Per-layer bit widths under a weight-size budget, from per-layer sensitivities.

Greedy descent: every layer starts at the widest bit width; while the weights take more
than ``budget`` bits on average, the step (one layer, one bit width down) with the least
sensitivity added per bit saved is taken. Ties go to the larger layer (more bits saved). The bits the last step overshot are then
spent back on the upgrades that remove the most sensitivity per bit while the budget holds.
The answer is an ordinary config string (``*=<spec at the widest bits>,<layer>=<spec>,...``).
Measure the sensitivities with the rounding ``method`` that will quantize the model: with GPTQ
a layer at 2 bits costs far less than with nearest rounding, so the budget goes elsewhere.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

from .sensitivity import DEFAULT_SPEC, Sensitivity, sensitivity

__all__ = ["choose_bits", "mixed_precision", "average_bits"]


def average_bits(bits: dict[str, int], params: dict[str, int]) -> float:
    """Weight bits per parameter of an assignment ``layer -> bits``."""
    total = sum(params[n] for n in bits)
    return sum(bits[n] * params[n] for n in bits) / total


def choose_bits(sens: Sensitivity, budget: float, measure: str = "loss") -> dict[str, int]:
    """Each layer's bit width (from ``sens.bits``) so that the average is at most ``budget`` bits per weight."""
    widths = sorted(set(sens.bits), reverse=True)
    if not widths[-1] <= budget:
        raise ValueError(f"budget must be >= the narrowest bit width {widths[-1]}, got {budget}")
    choice = {n: widths[0] for n in sens.layers}
    while average_bits(choice, sens.params) > budget + 1e-9:
        best = None
        for n in sens.layers:
            i = widths.index(choice[n])
            if i + 1 == len(widths):
                continue
            b0, b1 = widths[i], widths[i + 1]
            added = max(0.0, sens.score(n, b1, measure) - sens.score(n, b0, measure))
            saved = sens.params[n] * (b0 - b1)
            key = (added / saved, -saved)
            if best is None or key < best[0]:
                best = (key, n, b1)
        if best is None:  # every layer at the narrowest width already
            break
        choice[best[1]] = best[2]
    # the last step may overshoot: spend what is left on the upgrades that remove the most sensitivity per bit
    while True:
        best = None
        for n in sens.layers:
            i = widths.index(choice[n])
            if i == 0:
                continue
            b0, b1 = widths[i], widths[i - 1]
            trial = dict(choice, **{n: b1})
            if average_bits(trial, sens.params) > budget + 1e-9:
                continue
            removed = max(0.0, sens.score(n, b0, measure) - sens.score(n, b1, measure))
            key = (-removed / (sens.params[n] * (b1 - b0)), n)
            if best is None or key < best[0]:
                best = (key, n, b1)
        if best is None:
            return choice
        choice[best[1]] = best[2]


def mixed_precision(
    model: nn.Module,
    calib: Iterable[object],
    data: object = None,
    *,
    budget: float = 4.0,
    bits: tuple[int, ...] = (8, 4, 3, 2),
    spec: str = DEFAULT_SPEC,
    measure: str = "loss",
    sens: Sensitivity | None = None,
    method: str = "nearest",
    **kwargs: object,
) -> str:
    """A config string giving each Conv/Linear layer its bits under an average of ``budget`` bits per weight."""
    if measure not in ("loss", "accuracy", "hessian"):
        raise ValueError(f"measure must be 'loss', 'accuracy' or 'hessian', got {measure!r}")
    if sens is None:
        if data is None and measure != "hessian":
            raise ValueError("data=<(inputs, labels) batches> is needed for measured sensitivities (or measure='hessian')")
        sens = sensitivity(model, calib, data, bits=bits, spec=spec,
                           measured=measure != "hessian", hessian=measure == "hessian", method=method,
                           **kwargs)  # type: ignore[arg-type]
    choice = choose_bits(sens, budget, measure)
    top = max(sens.bits)
    items = [f"*={spec.format(b=top)}"] + [f"{n}={spec.format(b=b)}" for n, b in choice.items() if b != top]
    return ",".join(items)
