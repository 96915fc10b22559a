"""Learned state ranges (LSQ for neuron states): the level set of :func:`~lowbit.snn.state_levels` with trainable ends.

:class:`LearnedStateQuantizer` keeps the *shape* of a uniform, threshold- or
zero-centred level set (snnTorch's construction, gap ratio included) and trains
where its range ends, as LSQ (Esser et al. 2020) trains a step size:

- ``thr`` / ``zero``: the levels below the centre ``c`` are ``c - d_lo * a_k`` and
  those above are ``c + d_hi * b_k`` (``a_k``, ``b_k`` in (0, 1], fixed at
  construction), so ``lower = c - d_lo`` and ``upper = c + d_hi`` are the trained
  parameters and the gap ratio and the number of levels on each side stay as built;
- ``uniform``: ``lower + (upper - lower) * k / (n - 1)`` (LSQ+'s scale and offset).

Forward: the nearest level (ties to the lower one, as :class:`StateQuantizer`).
Backward, LSQ's estimator: ``d q / d x`` is 1 inside the range and 0 where the
state clips (``clip_grad=False`` passes it straight through everywhere, as
:class:`StateQuantizer`); ``d q / d s`` for the scale ``s`` of the level's side is
``(q - x) / s`` inside the range and ``(q - c) / s`` (the normalised end level)
where it clips, times LSQ's gradient scale ``1 / sqrt(numel * levels on that side)``.

Initialise from a calibrated range (:meth:`LearnedStateQuantizer.calibrated`: the
percentiles of observed membrane potentials, :func:`~lowbit.snn.calibrate_state_range`),
train, then :meth:`~LearnedStateQuantizer.freeze` into a plain
:class:`~lowbit.snn.StateQuantizer` holding the learned levels (exact rounding,
clip counting, ``lowbit.save``).

Measured (``benchmarks/bench_snn.py --only harder``, 4-bit weights and states, mean of
seeds 0-1): learned ends help uniform levels (default task 89.6 -> 92.5 %) but not
threshold-centred ones (95.4 % calibrated vs 93.1 % learned; the learned ranges shrink,
seed 0 [-6.93, 4.72] -> [-5.90, 3.95]). On the harder task (16 classes, 40 units, 5-D
manifold) learned thr states match float (99.94 %, calibrated 99.78 %).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..formats import Codebook
from ..formats import state_levels as _cb_state_levels
from ..quantizers.state import StateQuantizer
from ..ranges.state import calibrate_state_range

__all__ = ["LearnedStateQuantizer", "freeze_states"]

_KINDS = ("uniform", "thr", "zero")


class _LearnedRound(torch.autograd.Function):
    """Nearest of the current levels (the module's cached codebook); LSQ gradients to both ends."""

    @staticmethod
    def forward(ctx, x: Tensor, lower: Tensor, upper: Tensor, mod: "LearnedStateQuantizer") -> Tensor:  # type: ignore[override]
        fmt, lo_end, hi_end, s_lo, s_hi = mod._current()
        q = fmt.quantize(x)  # exact look-up table (float32 CPU) or bucketize; ties to the lower level
        ctx.save_for_backward(x, q)
        ctx.consts = (mod, lo_end, hi_end, s_lo, s_hi)
        return q

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, q = ctx.saved_tensors
        mod, lo_end, hi_end, s_lo, s_hi = ctx.consts
        clipped = (x < lo_end).logical_or_(x > hi_end)
        gx = g.masked_fill(clipped, 0.0) if mod.clip_grad else g
        g_lo = g_hi = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            n = x.numel()
            if mod.kind == "uniform":
                # q = lower + s t: d q/d upper = (q - x)/s inside, t at a clipped end; d q/d lower = -(q - x)/s, 1 - t
                t = (q - lo_end) / s_hi
                d = torch.where(clipped, t, (q - x) / s_hi)
                gd = (g * d).sum()
                gc = g[clipped].sum()  # d lower + d upper = 1 where clipped, 0 inside
                scale = 1.0 / math.sqrt(n * (mod.n_levels - 1))
                g_hi, g_lo = gd * scale, (gc - gd) * scale
            else:
                # q = c + s (normalised level): d q/d s = (q - x)/s inside, (q - c)/s where clipped; s_hi = upper - c,
                # s_lo = c - lower on the level's side of the centre
                c = mod.centre
                d = torch.where(clipped, q - c, q - x).mul_(g)
                above = q >= c
                d_hi = d[above].sum()
                d_lo = d.sum() - d_hi
                g_hi = d_hi / (s_hi * math.sqrt(n * mod.n_above))
                g_lo = -d_lo / (s_lo * math.sqrt(n * mod.n_below))
            g_lo, g_hi = g_lo.reshape(ctx.consts[0].lower.shape), g_hi.reshape(ctx.consts[0].upper.shape)
        return gx, g_lo, g_hi, None


class LearnedStateQuantizer(nn.Module):
    """Neuron-state quantizer whose range ends ``lower`` / ``upper`` are trained with LSQ's gradient."""

    template: Tensor

    def __init__(
        self,
        kind: str,
        num_bits: int,
        threshold: float = 1.0,
        lower_limit: float = 0.0,
        upper_limit: float = 0.2,
        multiplier: float | None = None,
        *,
        clip_grad: bool = True,
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if not isinstance(clip_grad, bool):
            raise TypeError(f"clip_grad must be a bool, got {type(clip_grad).__name__}")
        # the starting levels (validates num_bits, threshold, the limits and the multiplier)
        base = _cb_state_levels(kind, num_bits, threshold, lower_limit, upper_limit, multiplier).levels.double()
        self.kind, self.num_bits, self.threshold = kind, int(num_bits), float(threshold)
        self.multiplier = multiplier
        self.clip_grad = clip_grad
        self.n_levels = len(base)
        lo, hi = float(base[0]), float(base[-1])
        if kind == "uniform":
            self.centre = lo  # unused: uniform levels are affine in (lower, upper)
            tpl = (base - lo) / (hi - lo)
            self.n_below, self.n_above = 0, self.n_levels - 1
        else:
            c = self.threshold if kind == "thr" else 0.0
            self.centre = c
            self.n_below = int((base < c).sum())
            self.n_above = self.n_levels - self.n_below
            if self.n_below == 0 or self.n_above == 0:
                raise ValueError(f"a learned {kind!r} range needs levels on both sides of its centre {c:g}; "
                                 f"got the range [{lo:g}, {hi:g}] (widen lower_limit / upper_limit)")
            # below the centre: (L - c) / (c - lo) in [-1, 0); above: (L - c) / (hi - c) in (0, 1]
            tpl = torch.where(base < c, (base - c) / (c - lo), (base - c) / (hi - c))
        self.register_buffer("template", tpl.float(), persistent=False)
        self.lower = nn.Parameter(torch.tensor(lo, dtype=torch.float32))
        self.upper = nn.Parameter(torch.tensor(hi, dtype=torch.float32))
        self._cache: tuple[object, tuple[Codebook, float, float, float, float]] | None = None

    def _current(self) -> tuple[Codebook, float, float, float, float]:
        """The current levels as a codebook, their ends and the two scales; rebuilt only when the ends change."""
        key = (self.lower._version, self.upper._version, self.lower.data_ptr(), self.upper.data_ptr(),
               float(self.lower), float(self.upper))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                lv = self.levels_from(self.lower, self.upper).float()
            lo_end, hi_end = float(lv[0]), float(lv[-1])
            if self.kind == "uniform":
                s_lo = s_hi = hi_end - lo_end
            else:
                s_lo, s_hi = self.centre - lo_end, hi_end - self.centre
            self._cache = (key, (Codebook(lv), lo_end, hi_end, s_lo, s_hi))
        return self._cache[1]

    @classmethod
    def calibrated(cls, kind: str, num_bits: int, mem: Tensor, threshold: float = 1.0,
                   pct: tuple[float, float] = (2.0, 98.0), multiplier: float | None = None,
                   *, clip_grad: bool = True) -> "LearnedStateQuantizer":
        """Start from the ``pct`` percentiles of observed potentials ``mem`` (:func:`calibrate_state_range`)."""
        ll, ul = calibrate_state_range(mem, threshold, *pct)
        return cls(kind, num_bits, threshold, ll, ul, multiplier, clip_grad=clip_grad)

    def _min_gap(self) -> float:
        return 1e-3 * self.threshold

    def levels_from(self, lower: Tensor, upper: Tensor) -> Tensor:
        """The level set for range ends ``lower`` / ``upper`` (each side kept at least a small gap wide)."""
        t, eps = self.template, self._min_gap()
        if self.kind == "uniform":
            s = torch.clamp(upper - lower, min=eps * self.n_levels)
            return lower + s * t
        c = self.centre
        d_lo = torch.clamp(c - lower, min=eps)
        d_hi = torch.clamp(upper - c, min=eps)
        return c + torch.where(t < 0, d_lo * t, d_hi * t)

    @property
    def levels(self) -> Tensor:
        """The current levels (no gradient)."""
        with torch.no_grad():
            return self.levels_from(self.lower, self.upper).detach().clone()

    def limits(self) -> tuple[float, float]:
        """snnTorch's ``(lower_limit, upper_limit)`` of the current range: ``[-thr (1 + lower_limit), thr (1 + upper_limit)]``."""
        lv = self.levels
        return -float(lv[0]) / self.threshold - 1.0, float(lv[-1]) / self.threshold - 1.0

    def extra_repr(self) -> str:
        lv = self.levels
        return (f"kind={self.kind!r}, num_bits={self.num_bits}, range=[{float(lv[0]):.4g}, {float(lv[-1]):.4g}], "
                f"learned, clip_grad={self.clip_grad}")

    def forward(self, x: Tensor) -> Tensor:
        """Nearest level of every element; LSQ gradients to the range ends."""
        return _LearnedRound.apply(x, self.lower, self.upper, self)

    def freeze(self) -> StateQuantizer:
        """A fixed :class:`StateQuantizer` holding the current levels (exact rounding, clip counts, saves)."""
        return StateQuantizer(self.levels, kind=self.kind, num_bits=self.num_bits)


def freeze_states(model: nn.Module) -> nn.Module:
    """Replace every :class:`LearnedStateQuantizer` a network's neurons hold by its frozen :class:`StateQuantizer`."""
    for mod in list(model.modules()):
        for attr in ("state_quant", "syn_quant"):
            q = getattr(mod, attr, None)
            if isinstance(q, LearnedStateQuantizer):
                setattr(mod, attr, q.freeze())
    return model
