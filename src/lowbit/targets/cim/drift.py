"""Conductance over time and per-read noise: PCM drift, global drift compensation, read noise.

Drift (PCM, as aihwkit's ``PCMLikeNoiseModel`` and Joshi et al. 2020): a device programmed to
``g(t0)`` conducts ``g(t) = g(t0) (t/t0)^-nu`` at time ``t`` after programming, with a
per-device exponent ``nu ~ N(nu_mean, nu_std)`` clipped at 0 (a conductance never grows).

Global drift compensation (aihwkit ``GlobalDriftCompensation``, current version): right after
programming the chip reads each layer's array once with the one-hot inputs ``eye(K)`` and
stores ``mean|y(t0)|``; at read time it reads the same inputs again and multiplies the
layer's digital output by ``alpha = mean|y(t0)| / mean|y(t)|``. One scalar per layer, so it
undoes the average decay exactly and leaves the per-device spread of ``nu`` in place.
(Older aihwkit read ``max|y|`` of one all-ones input; the mean over one-hot reads is the
current choice and less sensitive to a single outlier device.)

RRAM retention (``retention=(relax, sigma)``; a simple form of the retention models in
NeuroSim V1.3's ``wage_quantizer.Retention`` with ``detect=1``, where a conductance drifts
toward a target state, and TorchInference_RRAM HEAD, whose per-level drift mean and variance
grow with ``log10(t)``; see ../shared/reference/cim_pwfn.md §1.8): with ``d = log10(t/t0)``
decades, a cell at ``g`` reads ``g + min(1, relax d) (g_mid - g) + sigma d L N(0, 1)`` (clipped
at 0), where ``g_mid = g_min + L/2`` is the middle of the cell's range ``L = 2^cell_bits - 1``.
Levels relax toward the middle (the filament's mean state) and spread linearly in log time.

Stuck-at faults over time (``fault_rate = p`` per decade): by time ``t`` a fraction
``1 - (1 - p)^d`` of the cells is stuck, half at ``g_min`` and half at ``g_min + L``. Each cell
draws one uniform number for *when* it fails, so with a fixed seed the set of failed cells
only grows with ``t``.

Read noise: every read multiplies each conductance by ``1 + sigma * N(0, 1)`` (clipped at 0),
drawn afresh per forward from torch's global generator (seed it with ``torch.manual_seed``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import CrossbarConfig

__all__ = ["drift_factors", "compensation_scale", "with_read_noise", "age"]

_MIN_READOUT = 1e-4  # aihwkit's clamp: a dead layer gets a bounded scale, not a division by zero


def drift_factors(shape: torch.Size | tuple[int, ...], cfg: CrossbarConfig, generator: torch.Generator | None = None) -> Tensor:
    """Per-device ``(t/t0)^-nu`` of ``cfg`` (ones when it does not drift), float32 of ``shape``."""
    if not cfg.drifts:
        return torch.ones(shape)
    assert cfg.drift_nu is not None and cfg.t_seconds is not None
    mean, std = cfg.drift_nu
    nu = (mean + std * torch.randn(shape, generator=generator)).clamp_min(0.0) if std else torch.full(shape, mean)
    # float64 power, then float32: a uniform nu gives one identical factor for every device.
    return torch.pow(torch.tensor(cfg.t_seconds / cfg.t0, dtype=torch.float64), -nu.double()).float()


def compensation_scale(read_t0: Tensor, read_t: Tensor) -> float:
    """aihwkit's global drift compensation factor ``mean|read_t0| / mean|read_t|`` (read-outs clamped at 1e-4)."""
    ref = float(read_t0.abs().mean().clamp_min(_MIN_READOUT))
    cur = float(read_t.abs().mean().clamp_min(_MIN_READOUT))
    return ref / cur


def with_read_noise(g: Tensor, sigma: float) -> Tensor:
    """Conductances ``g`` as one read sees them: ``g (1 + sigma N(0,1))`` clipped at 0; ``g`` itself when ``sigma == 0``."""
    if not sigma:
        return g
    return (g * (1 + sigma * torch.randn_like(g))).clamp_min(0.0)


def age(g: Tensor, cfg: CrossbarConfig, generator: torch.Generator | None = None) -> Tensor:
    """Conductances ``g`` (level units, programmed at ``t0``) as read at ``cfg.t_seconds``: drift, retention, faults.

    The draws' number does not depend on ``t``, so a seed gives one chip that ages.
    """
    if not cfg.ages:
        return g
    d = cfg.decades
    levels = float(cfg.cell_levels)
    out = g * drift_factors(g.shape, cfg, generator) if cfg.drift_nu is not None else g
    if cfg.retention is not None:
        relax, sigma = cfg.retention
        mid = cfg.g_min + levels / 2
        spread = torch.randn(g.shape, generator=generator)
        out = (out + min(1.0, relax * d) * (mid - out) + sigma * d * levels * spread).clamp_min(0.0)
    if cfg.fault_rate:
        when = torch.rand(g.shape, generator=generator)  # a cell fails once its draw falls below the failed fraction
        high = torch.rand(g.shape, generator=generator) < 0.5
        failed = when < 1.0 - (1.0 - cfg.fault_rate) ** d
        out = torch.where(failed, torch.where(high, cfg.g_min + levels, cfg.g_min), out)
    return out
