"""Learned ranges' starting points: ``lsq`` (LSQ's initial step size) and ``lsq.<range>``.

The token belongs to the core grammar, so a spec means the same whether or not
:mod:`lowbit.nn` is imported; :func:`lowbit.quantizers.build_quantizer` turns a spec
with this range into a learned-step quantizer (:class:`lowbit.quantizers.LSQQuantizer`).
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..formats import Format
from .estimators import RangeEstimator
from .registry import range_from_token, range_names, register_range

__all__ = ["LSQInit", "lsq_init_scale"]


def _qp(fmt: Format) -> float:
    # Qp: the top level (LSQ's 2^(b-1)-1 for signed, 2^b-1 for unsigned integers).
    return fmt.hi if fmt.hi > 0 else max(abs(fmt.lo), 1e-12)


def lsq_init_scale(rows: Tensor, fmt: Format) -> Tensor:
    """LSQ's initial step size per row: ``2*mean|v|/sqrt(Qp)``."""
    s = 2 * rows.detach().abs().float().mean(dim=1) / math.sqrt(_qp(fmt))
    return torch.where(s > 0, s, torch.ones_like(s))


class LSQInit(RangeEstimator):
    """Range token ``lsq`` (or ``lsq.<range>``, e.g. ``lsq.mse``): LSQ's initial clip.

    ``lsq`` starts from the paper's ``2*mean|v|/sqrt(Qp)``; ``lsq.<range>`` starts
    from the clip another range estimator finds (as Torch2Chip starts from MSE).
    """

    def __init__(self, init: RangeEstimator | None = None) -> None:
        self.init = init
        self.spec = "lsq" if init is None else f"lsq.{init.spec}"

    def __call__(self, rows: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        if not torch.isfinite(rows).all():
            raise ValueError("x contains NaN or Inf values; clean the tensor before quantizing it")
        if self.init is not None:
            return self.init(rows, fmt)
        s = lsq_init_scale(rows, fmt)
        return s * min(fmt.lo, 0.0), s * fmt.hi


def _lsq_range(m: "re.Match[str]") -> LSQInit:
    if m.group("init") is None:
        return LSQInit()
    est = range_from_token(m.group("init"))
    if est is None or isinstance(est, LSQInit):
        raise ValueError(f"lsq.<range>: unknown range {m.group('init')!r}; valid: {', '.join(range_names())}")
    return LSQInit(est)


register_range(r"lsq(?:\.(?P<init>.+))?", _lsq_range, "lsq / lsq.<range> (learned step size)")
