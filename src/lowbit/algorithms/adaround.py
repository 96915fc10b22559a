"""AdaRound (Nagel et al. 2020): learn, per weight, whether it rounds down or up, from the layer's output.

Each weight lies between two neighbouring levels of the format, ``lo <= w/s + z <= hi``
(for an integer grid ``lo = floor``, ``hi = lo + 1``; for a codebook the two nearest
levels). The soft weight is ``(lo + h(V) (hi - lo) - z) s`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``,
``V`` initialised so that ``h(V)`` is the fractional position. Adam minimises

    ||W x - W~ x||^2 (summed over output channels, averaged over the rest)
    + lam * sum(1 - |2 h(V) - 1|^beta)

on calibration inputs ``x`` (the quantized model's inputs of this layer); the rounding
regularizer is off for the first ``warmup`` fraction of the steps, then ``beta`` falls
linearly from 20 to 2, driving every ``h`` to 0 or 1. The result rounds up where ``V >= 0``.
Layer-wise only: BRECQ-style block reconstruction is not implemented.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizer import Quantizer
from .grid import element_grid

__all__ = ["adaround_quantize", "rectified_sigmoid", "ZETA", "GAMMA"]

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
    if isinstance(layer, nn.Linear):
        return F.linear(x, w)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
        if layer.padding_mode != "zeros":
            x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
            return conv(x, w, None, layer.stride, 0, layer.dilation, layer.groups)
        return conv(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    raise TypeError(f"layer must be a Linear, Conv1d or Conv2d, got {type(layer).__name__}")


def adaround_quantize(
    layer: nn.Module,
    q: Quantizer,
    inputs: Tensor,
    *,
    iters: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-3,
    lam: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    seed: int = 0,
) -> Tensor:
    """The AdaRound weight of ``layer`` (on ``q``'s frozen grid, same shape), learned on ``inputs`` (samples first)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs is empty: AdaRound needs calibration inputs")
    w = layer.weight.detach().float()
    shape = w.shape
    S, Z = element_grid(q, w)
    S, Z = S.reshape(shape), (Z.reshape(shape) if Z is not None else None)
    xn = w / S
    if Z is not None:
        xn = xn + Z
    levels = q.fmt.levels.to(torch.float32)
    lo, hi = _neighbours(xn, levels)
    step = hi - lo
    frac = torch.where(step > 0, (xn - lo) / torch.where(step > 0, step, torch.ones_like(step)), torch.zeros_like(xn))
    frac = frac.clamp(0.0, 1.0)
    # h(V) = frac at the start: V = -log((zeta - gamma) / (frac - gamma) - 1)
    V = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0))
    zs = Z if Z is not None else torch.zeros((), dtype=torch.float32)

    def weight_of(h: Tensor) -> Tensor:
        return (lo + h * step - zs) * S

    opt = torch.optim.Adam([V], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x_all = inputs.detach().float()
    n = x_all.shape[0]
    warm = int(warmup * iters)
    with torch.enable_grad():
        for t in range(iters):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            x = x_all[idx]
            diff = _apply(layer, x, w - weight_of(rectified_sigmoid(V)))
            rec = diff.pow(2).sum(1 if diff.dim() > 1 else 0).mean()
            if t < warm:
                loss = rec
            else:
                rel = (t - warm) / max(1, iters - warm)
                b = beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - rel)
                reg = (1.0 - (2.0 * rectified_sigmoid(V) - 1.0).abs().pow(b)).sum()
                loss = rec + lam * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if not bool(torch.isfinite(V).all()):
        raise ValueError("AdaRound diverged (non-finite rounding variables): check the inputs and weights for NaN/Inf")
    with torch.no_grad():
        lvl = torch.where(V >= 0, hi, lo)  # exactly a level (lo + 1 * step may miss a codebook level by an ulp)
        out = lvl - Z if Z is not None else lvl
        return (out * S).to(layer.weight.dtype)
