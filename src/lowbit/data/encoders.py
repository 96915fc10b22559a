"""Spike encoders: real values in [0, 1] -> spike rasters [batch, time, features] (also as ``lowbit.snn.encoders``).

- :func:`latency_encode`: one spike per input, earlier for brighter (mlGeNN's
  ``linear_latency_encode_data``: ``t = t_min + (1 - x) (t_max - t_min)``, only
  inputs above ``thresh`` spike);
- :func:`rate_encode`: Bernoulli spikes with probability ``gain * x`` per step, seeded.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["latency_encode", "rate_encode", "events_to_raster"]


def _check_x(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        x = x.float()
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty tensor [batch, features] or [features], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf values")
    return x


def _check_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")


def latency_encode(
    x: Tensor,
    num_steps: int,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    thresh: float = 0.0,
    dt: float = 1.0,
) -> Tensor:
    """One spike per input above ``thresh`` at ``t_min + (1 - x)(t_max - t_min)``; x in [0, 1] -> [batch, time, features].

    Defaults follow mlGeNN's latency MNIST: ``t_min = 2 dt``, ``t_max = (num_steps - 2) dt``.
    Spike times are rounded to the nearest step.
    """
    x = _check_x(x)
    _check_steps(num_steps)
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    t_min = 2 * dt if t_min is None else t_min
    t_max = (num_steps - 2) * dt if t_max is None else t_max
    if not 0 <= t_min <= t_max < num_steps * dt:
        raise ValueError(f"need 0 <= t_min <= t_max < num_steps*dt, got t_min={t_min}, t_max={t_max}, num_steps={num_steps}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError("x must lie in [0, 1] (scale it first)")
    squeeze = x.dim() == 1
    x2 = x.reshape(1, -1) if squeeze else x.reshape(x.shape[0], -1)
    t = t_min + (1.0 - x2) * (t_max - t_min)
    step = torch.round(t / dt).long().clamp_(0, num_steps - 1)
    out = torch.zeros(x2.shape[0], num_steps, x2.shape[1], dtype=torch.float32)
    fire = x2 > thresh
    out.scatter_(1, step.unsqueeze(1), fire.unsqueeze(1).float())
    return out[0] if squeeze else out


def rate_encode(x: Tensor, num_steps: int, *, gain: float = 1.0, seed: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli spikes with probability ``clamp(gain * x, 0, 1)`` at every step -> [batch, time, features]."""
    x = _check_x(x)
    _check_steps(num_steps)
    if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain >= 0):
        raise ValueError(f"gain must be a non-negative number, got {gain!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    squeeze = x.dim() == 1
    x2 = x.reshape(1, -1) if squeeze else x.reshape(x.shape[0], -1)
    p = (gain * x2).clamp(0, 1).unsqueeze(1).expand(-1, num_steps, -1)
    out = (torch.rand(p.shape, generator=generator) < p).float()
    return out[0] if squeeze else out


def events_to_raster(times: Tensor, units: Tensor, num_steps: int, num_units: int, dt: float = 1.0) -> Tensor:
    """Bin (time, unit) events of one sample into a spike-count raster [time, units] (times in units of dt)."""
    _check_steps(num_steps)
    if times.shape != units.shape:
        raise ValueError(f"times and units must have the same shape, got {tuple(times.shape)} and {tuple(units.shape)}")
    out = torch.zeros(num_steps, num_units, dtype=torch.float32)
    if times.numel() == 0:
        return out
    step = torch.floor(times.double() / dt).long().clamp_(0, num_steps - 1)
    u = units.long()
    if int(u.min()) < 0 or int(u.max()) >= num_units:
        raise ValueError(f"units must lie in [0, {num_units}), got range [{int(u.min())}, {int(u.max())}]")
    out.index_put_((step, u), torch.ones_like(step, dtype=torch.float32), accumulate=True)
    return out
