"""AdaRound (Nagel et al. 2020): learn, per weight, whether it rounds down or up, from the output it feeds.

Each weight lies between two neighbouring levels of the format, ``lo <= w/s + z <= hi``
(for an integer grid ``lo = floor``, ``hi = lo + 1``; for a codebook the two nearest
levels). The soft weight is ``(lo + h(V) (hi - lo) - z) s`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``,
``V`` initialised so that ``h(V)`` is the fractional position. Adam (lr 1e-3, batch 32)
minimises

    || f_a(W x) - f_a(W~ x~) ||^2 (summed over output channels, averaged over the rest)
    + lam * sum(1 - |2 h(V) - 1|^beta),      lam = 0.01

The reconstruction is *asymmetric*, as in the paper's eq. 25, AIMET and BRECQ's "asym" mode:
the target is the FLOAT model's output (float inputs ``x`` through float weights), the soft
weights see the inputs ``x~`` that the already quantized earlier layers produce, so each
layer also absorbs the error the layers before it made. ``f_a`` is what follows the layer up
to the next rounded layer (bias, folded BN, ReLU, pooling) when the layer sits in an
``nn.Sequential`` (lowbit.algorithms.brecq finds it), else the layer's own output with bias.
The symmetric form (both sides on ``x~``, no ``f_a``) lost 10 pt at W2 on the digits VGG and
is kept only for :func:`adaround_quantize` called without ``float_inputs`` (a lone layer).

The rounding regularizer is off for the first ``warmup`` (20 %) of the steps, then ``beta``
falls linearly from 20 to 2, driving every ``h`` to 0 or 1. The result rounds up where
``V >= 0``. Steps: 1000 per layer by default (AIMET 10k, BRECQ 20k; at W2 on the small
CNNs 1000 already settles the rounding, and a layer costs seconds on one CPU thread). The
scale stays the one the quantizer fitted (``:mse`` range search in the benchmark).
:func:`reconstruct` optimises several layers' roundings jointly on one output: BRECQ-style
block reconstruction (Li et al. 2021) is that with a block of layers.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizer import Quantizer
from .grid import element_grid

__all__ = ["adaround_quantize", "rectified_sigmoid", "reconstruct", "SoftRounding", "ZETA", "GAMMA"]

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: Tensor) -> Tensor:
    """``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _neighbours(xn: Tensor, levels: Tensor) -> tuple[Tensor, Tensor]:
    # the level at or below and the level above each normalised weight (both the end level outside the grid)
    idx = torch.bucketize(xn, levels, right=True) - 1
    lo_i = idx.clamp(0, levels.numel() - 1)
    hi_i = (idx + 1).clamp(0, levels.numel() - 1)
    lo, hi = levels[lo_i], levels[hi_i]
    below = xn < levels[0]
    lo = torch.where(below, levels[0], lo)  # under the grid: both neighbours are the lowest level
    hi = torch.where(below, levels[0], hi)
    return lo, hi


def _apply(layer: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    bias = getattr(layer, "bias", None)
    bias = bias.detach() if bias is not None else None  # only the rounding learns
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, bias)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            return conv(x, w, bias, layer.stride, 0, layer.dilation, layer.groups)
        return conv(x, w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    raise TypeError(f"layer must be a Linear, Conv1d or Conv2d, got {type(layer).__name__}")


class SoftRounding:
    """One weight's AdaRound state: its two neighbouring levels, the frozen scale and the rounding variables ``V``."""

    def __init__(self, weight: Tensor, q: Quantizer) -> None:
        w = weight.detach().float()
        self.shape, self.dtype = w.shape, weight.dtype
        S, Z = element_grid(q, w)
        self.S = S.reshape(w.shape)
        self.Z = Z.reshape(w.shape) if Z is not None else None
        xn = w / self.S
        if self.Z is not None:
            xn = xn + self.Z
        self.lo, self.hi = _neighbours(xn, q.fmt.levels.to(torch.float32))
        self.step = self.hi - self.lo
        frac = torch.where(self.step > 0, (xn - self.lo) / torch.where(self.step > 0, self.step, torch.ones_like(self.step)),
                           torch.zeros_like(xn)).clamp(0.0, 1.0)
        # h(V) = frac at the start: V = -log((zeta - gamma) / (frac - gamma) - 1)
        self.V = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0))

    def soft(self) -> Tensor:
        """The soft-rounded weight ``(lo + h(V) (hi - lo) - z) s`` (differentiable in ``V``)."""
        z = self.Z if self.Z is not None else 0.0
        return (self.lo + rectified_sigmoid(self.V) * self.step - z) * self.S

    def hard(self) -> Tensor:
        """The final weight: up where ``V >= 0``; exactly a level (``lo + 1 * step`` may miss a codebook level by an ulp)."""
        if not bool(torch.isfinite(self.V).all()):
            raise ValueError("AdaRound diverged (non-finite rounding variables): check the inputs and weights for NaN/Inf")
        with torch.no_grad():
            lvl = torch.where(self.V >= 0, self.hi, self.lo)
            out = lvl - self.Z if self.Z is not None else lvl
            return (out * self.S).to(self.dtype)

    def regularizer(self, beta: float) -> Tensor:
        """``sum(1 - |2 h(V) - 1|^beta)``: zero once every ``h`` is 0 or 1."""
        return (1.0 - (2.0 * rectified_sigmoid(self.V) - 1.0).abs().pow(beta)).sum()


def _check(iters: int, batch_size: int, warmup: float, n: int) -> None:
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    if n == 0:
        raise ValueError("inputs is empty: AdaRound needs calibration inputs")


def reconstruct(
    forward: Callable[[Tensor, Sequence[Tensor]], Tensor],
    roundings: Sequence[SoftRounding],
    inputs: Tensor,
    target: Tensor,
    *,
    iters: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-3,
    lam: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    seed: int = 0,
) -> list[Tensor]:
    """Learn the roundings so that ``forward(inputs, soft weights)`` matches ``target``; return the hard weights."""
    _check(iters, batch_size, warmup, inputs.shape[0])
    if target.shape[0] != inputs.shape[0]:
        raise ValueError(f"target must have one row per input sample ({inputs.shape[0]}), got {target.shape[0]}")
    opt = torch.optim.Adam([r.V for r in roundings], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x_all, t_all = inputs.detach().float(), target.detach().float()
    n = x_all.shape[0]
    warm = int(warmup * iters)
    with torch.enable_grad():
        for t in range(iters):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            diff = forward(x_all[idx], [r.soft() for r in roundings]) - t_all[idx]
            loss = diff.pow(2).sum(1 if diff.dim() > 1 else 0).mean()
            if t >= warm:  # the rounding regularizer, beta annealed 20 -> 2 after the warm-up
                rel = (t - warm) / max(1, iters - warm)
                b = beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - rel)
                loss = loss + lam * sum(r.regularizer(b) for r in roundings)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
    return [r.hard() for r in roundings]


def adaround_quantize(
    layer: nn.Module,
    q: Quantizer,
    inputs: Tensor,
    *,
    float_inputs: Tensor | None = None,
    iters: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-3,
    lam: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    seed: int = 0,
) -> Tensor:
    """The AdaRound weight of ``layer`` (on ``q``'s frozen grid, same shape), learned on ``inputs`` (samples first).

    The target is the float layer's output on ``float_inputs`` (the float model's inputs of this
    layer, asymmetric reconstruction) or, without them, on ``inputs`` themselves.
    """
    _check(iters, batch_size, warmup, inputs.shape[0])
    ref = inputs if float_inputs is None else float_inputs
    if ref.shape != inputs.shape:
        raise ValueError(f"float_inputs must have the shape of inputs {tuple(inputs.shape)}, got {tuple(ref.shape)}")
    w = layer.weight.detach().float()
    with torch.no_grad():
        target = torch.cat([_apply(layer, c.float(), w) for c in ref.split(256)])
    r = SoftRounding(layer.weight, q)
    return reconstruct(lambda x, ws: _apply(layer, x, ws[0]), [r], inputs, target, iters=iters, batch_size=batch_size,
                       lr=lr, lam=lam, beta=beta, warmup=warmup, seed=seed)[0]
