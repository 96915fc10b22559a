"""Named presets of weight fixing: ``pwfn`` (the original's rules) and ``lowbit`` (this library's choices), side by side.

| knob | ``pwfn`` (subiawaud/PWFN @8dc0410) | ``lowbit`` (the default) |
|---|---|---|
| optimiser | SGD lr 1e-3, momentum 0.9, weight decay 1e-4 (sigmas and fixed mus too), grad-norm clip 1 | Adam lr 1e-3, no clip |
| regulariser on sigma | every weight sigma, fixed ones too; never bias sigmas | free weights' sigmas only |
| biases | noisy, fixed and counted like weights | left float, trained, not counted |
| fixed weights | keep noise (sigma = std of their group's mus), re-clustered every round: may move or fall free | frozen exactly on their centre, never re-assigned |
| escalation when no centre absorbs | more power-of-two terms first, then ``tau *= inc`` | ``tau *= inc`` first, then more terms |
| warm-up before round 0 | 5 % of one epoch | ``start_epochs`` (1) full epochs |
| per round | train -> test -> cluster (the log's accuracy is before the round's fixing) | cluster -> test -> train |
| zero_fix row | ``faithful_bugs=True``: the original's index ``len(centres)//2`` (drifts off zero) | the real zero centre |

Exactly-zero weights: the original's sigma init ``0.0025 r / q75(r)`` is NaN for the whole
layer when one weight is exactly 0 (``r = 0/0``). Neither preset reproduces that silent NaN:
``faithful_bugs=True`` refuses such a model with a ValueError naming the layer; otherwise a
zero weight starts at sigma ``2^-30`` (it already sits on a centre).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .pwfn_cluster import ESCALATIONS

__all__ = ["FixingPreset", "PRESETS", "fixing_preset"]

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class FixingPreset:
    """Every knob where the original PWFN and lowbit's weight fixing differ (see the module table)."""

    name: str
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_norm: float | None = None
    include_bias: bool = False
    fixed_noise: bool = False  # True: fixed weights keep std_mu noise and are re-clustered every round
    reg_on_fixed: bool = False
    escalation: str = "tau_first"
    warmup_fraction: float = 1.0  # of each warm-up epoch's batches
    test_before_fix: bool = False
    faithful_bugs: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.escalation not in ESCALATIONS:
            raise ValueError(f"escalation must be one of {ESCALATIONS}, got {self.escalation!r}")
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {v!r}")
        if self.clip_norm is not None and not (isinstance(self.clip_norm, (int, float)) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be a number > 0 or None, got {self.clip_norm!r}")
        if not (isinstance(self.warmup_fraction, (int, float)) and 0 < self.warmup_fraction <= 1):
            raise ValueError(f"warmup_fraction must be a number in (0, 1], got {self.warmup_fraction!r}")


PRESETS: dict[str, FixingPreset] = {
    "lowbit": FixingPreset("lowbit"),
    "pwfn": FixingPreset("pwfn", optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-4, clip_norm=1.0,
                         include_bias=True, fixed_noise=True, reg_on_fixed=True, escalation="terms_first",
                         warmup_fraction=0.05, test_before_fix=True),  # fmt: skip
}
KNOBS = tuple(f.name for f in dataclasses.fields(FixingPreset) if f.name != "name")


def fixing_preset(name: str | FixingPreset, **overrides: object) -> FixingPreset:
    """The named preset (``pwfn`` or ``lowbit``) with any knob overridden: switch one at a time."""
    if isinstance(name, FixingPreset):
        base = name
    elif name in PRESETS:
        base = PRESETS[name]
    else:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
    bad = set(overrides) - set(KNOBS)
    if bad:
        raise ValueError(f"unknown preset knob(s) {sorted(bad)}; knobs: {', '.join(KNOBS)}")
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
