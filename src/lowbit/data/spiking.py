"""Offline spiking data sets: Randman, Yin-Yang, spike-encoded digits, and users' SHD files.

Everything here is generated procedurally or read from a path the user gives;
nothing is downloaded. Rasters are float tensors [samples, time, units].

- :func:`randman` / :func:`randman_raster`: Zenke & Vogels' random-manifold task
  (each unit spikes exactly ``nb_spikes`` times; the class is in the timing only).
- :func:`yin_yang`: Kriener et al.'s Yin-Yang points (x, y, 1-x, 1-y) and classes.
- :func:`spiking_digits`: scikit-learn's 8x8 digits, latency or rate encoded.
- :func:`load_shd`: Spiking Heidelberg Digits from a user's HDF5 file (needs ``h5py``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..signatures import parameters_of
from .encoders import latency_encode, rate_encode

__all__ = [
    "randman_manifold",
    "randman",
    "randman_raster",
    "events_to_rasters",
    "yin_yang",
    "spiking_yin_yang",
    "spiking_digits",
    "load_shd",
    "split",
]


def _pos_int(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _pos_float(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return float(v)


# --------------------------------------------------------------------------- Randman


def randman_manifold(
    embedding_dim: int,
    manifold_dim: int,
    alpha: float = 2.0,
    beta: float = 0.0,
    prec: float = 1e-3,
    max_f_cutoff: int = 1000,
    use_bias: bool = False,
    seed: int = 0,
):  # type: ignore[no-untyped-def]
    """A smooth random manifold: returns ``f(x)`` mapping [n, manifold_dim] in [0,1) to [n, embedding_dim].

    ``y_j(x) = prod_d sum_i a_i s_i sin(2 pi (i x_d b_i + c_i))`` with ``s_i = 1/((i+1-beta)^alpha + 1)``,
    ``(a, b, c) ~ U[0,1)`` and ``i < min(ceil(prec^(-1/alpha)), max_f_cutoff)``.
    """
    embedding_dim = _pos_int(embedding_dim, "embedding_dim")
    manifold_dim = _pos_int(manifold_dim, "manifold_dim")
    alpha = _pos_float(alpha, "alpha")
    f_cutoff = int(min(math.ceil(prec ** (-1.0 / alpha)), max_f_cutoff))
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.rand(embedding_dim, manifold_dim, 3, f_cutoff, generator=g, dtype=torch.float64)
    if not use_bias:
        theta[:, :, 0, 0] = 0.0
    i = torch.arange(f_cutoff, dtype=torch.float64)
    spect = 1.0 / ((i + 1 - beta) ** alpha + 1.0)
    amp = theta[:, :, 0] * spect  # [E, D, F]
    freq = theta[:, :, 1] * i  # [E, D, F]
    phase = theta[:, :, 2]

    def f(x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.dim() != 2 or x.shape[1] != manifold_dim:
            raise ValueError(f"x must have shape [n, {manifold_dim}], got {tuple(x.shape)}")
        out = []
        chunk = max(1, 2_000_000 // (embedding_dim * manifold_dim * f_cutoff))
        for s in range(0, x.shape[0], chunk):  # bounded memory for large f_cutoff (alpha = 1: 1000 terms)
            xs = x[s : s + chunk, None, :, None]  # [n, 1, D, 1]
            terms = amp * torch.sin(2 * math.pi * (xs * freq + phase))  # [n, E, D, F]
            out.append(terms.sum(-1).prod(-1))  # [n, E]
        return torch.cat(out)

    return f


def randman(
    nb_classes: int = 10,
    nb_units: int = 100,
    nb_steps: int = 100,
    step_frac: float = 1.0,
    dim_manifold: int = 2,
    nb_spikes: int = 1,
    nb_samples: int = 1000,
    alpha: float = 2.0,
    shuffle: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Randman spiking data set: events [N, nb_units * nb_spikes, 2] of (time, unit) and labels [N].

    ``N = nb_classes * nb_samples``; every unit spikes ``nb_spikes`` times at
    ``y_u * nb_steps * step_frac``, with ``y`` a class manifold min-max scaled per unit to [0, 1).
    """
    nb_classes = _pos_int(nb_classes, "nb_classes")
    nb_units = _pos_int(nb_units, "nb_units")
    nb_steps = _pos_int(nb_steps, "nb_steps")
    dim_manifold = _pos_int(dim_manifold, "dim_manifold")
    nb_spikes = _pos_int(nb_spikes, "nb_spikes")
    nb_samples = _pos_int(nb_samples, "nb_samples")
    step_frac = _pos_float(step_frac, "step_frac")
    if step_frac > 1:
        raise ValueError(f"step_frac must be in (0, 1], got {step_frac}")
    rng = np.random.default_rng(seed)
    manifold_seeds = rng.integers(np.iinfo(np.int32).max, size=(nb_classes, nb_spikes))
    data, labels = [], []
    for k in range(nb_classes):
        x = torch.as_tensor(rng.uniform(size=(nb_samples, dim_manifold)))
        times = []
        for i in range(nb_spikes):
            f = randman_manifold(nb_units, dim_manifold, alpha, seed=int(manifold_seeds[k, i]))
            y = f(x)
            lo, hi = y.min(0).values, y.max(0).values
            y = (y - lo) / (hi - lo + 1e-7)  # per-unit min-max over the class: [0, 1)
            times.append(y.numpy() * nb_steps * step_frac)
        t = np.concatenate(times, axis=1)
        units = np.tile(np.arange(nb_units), nb_spikes)
        data.append(np.stack([t, np.broadcast_to(units, t.shape)], axis=-1))
        labels.append(np.full(nb_samples, k, dtype=np.int64))
    events = np.concatenate(data).astype(np.float32)
    lab = np.concatenate(labels)
    if shuffle:
        p = rng.permutation(len(lab))
        events, lab = events[p], lab[p]
    return events, lab


def events_to_rasters(events: np.ndarray, nb_steps: int, nb_units: int) -> Tensor:
    """Bin (time, unit) events [N, K, 2] into rasters [N, nb_steps, nb_units] (floor; last bin clips)."""
    events = np.asarray(events)
    if events.ndim != 3 or events.shape[-1] != 2:
        raise ValueError(f"events must have shape [N, K, 2], got {events.shape}")
    n, k, _ = events.shape
    t = np.clip(np.floor(events[..., 0]).astype(np.int64), 0, nb_steps - 1)
    u = events[..., 1].astype(np.int64)
    if k and (u.min() < 0 or u.max() >= nb_units):
        raise ValueError(f"unit ids must lie in [0, {nb_units})")
    out = torch.zeros(n, nb_steps, nb_units)
    idx = torch.arange(n).repeat_interleave(k)
    out.index_put_((idx, torch.as_tensor(t.ravel()), torch.as_tensor(u.ravel())), torch.ones(n * k), accumulate=True)
    return out


@parameters_of(randman)  # one parameter list, kept in randman
def randman_raster(**a: Any) -> tuple[Tensor, Tensor]:
    """Randman as spike rasters [N, nb_steps, nb_units] and labels [N] (long); the arguments are :func:`randman`'s."""
    ev, lab = randman(**a)
    return events_to_rasters(ev, a["nb_steps"], a["nb_units"]), torch.as_tensor(lab)


# --------------------------------------------------------------------------- Yin-Yang


def _yin_yang_class(x: np.ndarray, y: np.ndarray, r_small: float, r_big: float) -> np.ndarray:
    d_right = np.hypot(x - 1.5 * r_big, y - r_big)
    d_left = np.hypot(x - 0.5 * r_big, y - r_big)
    yin = (d_right <= r_small) | ((d_left > r_small) & (d_left <= 0.5 * r_big)) | ((y > r_big) & (d_right > 0.5 * r_big))
    dots = (d_right < r_small) | (d_left < r_small)
    return np.where(dots, 2, yin.astype(np.int64))


def yin_yang(n_samples: int = 1000, r_small: float = 0.1, r_big: float = 0.5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Yin-Yang points: features (x, y, 1-x, 1-y) [n, 4] in [0, 1] and balanced labels (0 yang, 1 yin, 2 dot)."""
    n_samples = _pos_int(n_samples, "n_samples")
    r_small, r_big = _pos_float(r_small, "r_small"), _pos_float(r_big, "r_big")
    if r_small >= r_big / 2:
        raise ValueError(f"r_small must be < r_big / 2, got r_small={r_small}, r_big={r_big}")
    rng = np.random.default_rng(seed)
    want = rng.integers(0, 3, size=n_samples)  # the class of each sample, drawn first (balanced in expectation)
    pools: list[list[np.ndarray]] = [[], [], []]
    counts = np.bincount(want, minlength=3)
    have = np.zeros(3, dtype=np.int64)
    while (have < counts).any():
        pts = rng.uniform(0, 2 * r_big, size=(4096, 2))
        inside = np.hypot(pts[:, 0] - r_big, pts[:, 1] - r_big) <= r_big
        pts = pts[inside]
        c = _yin_yang_class(pts[:, 0], pts[:, 1], r_small, r_big)
        for k in range(3):
            pools[k].append(pts[c == k])
            have[k] += int((c == k).sum())
    xy = np.zeros((n_samples, 2))
    for k in range(3):
        pool = np.concatenate(pools[k])[: counts[k]]
        xy[want == k] = pool
    feats = np.concatenate([xy, 2 * r_big - xy], axis=1) / (2 * r_big)
    return torch.as_tensor(feats, dtype=torch.float32), torch.as_tensor(want)


def spiking_yin_yang(n_samples: int = 1000, num_steps: int = 30, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Yin-Yang latency encoded: rasters [n, num_steps, 4] (one spike per feature) and labels."""
    x, y = yin_yang(n_samples, seed=seed)
    return latency_encode(x, num_steps, thresh=-1.0), y


# --------------------------------------------------------------------------- digits


def spiking_digits(num_steps: int = 20, encoding: str = "latency", seed: int = 0) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits (1797) as spike rasters [1797, num_steps, 64] and labels; needs scikit-learn."""
    if encoding not in ("latency", "rate"):
        raise ValueError(f"encoding must be 'latency' or 'rate', got {encoding!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover
        raise ImportError("spiking_digits needs scikit-learn: pip install 'lowbit[data]'") from None
    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(d.target, dtype=torch.long)
    if encoding == "latency":
        return latency_encode(x, num_steps), y  # pixels at 0 stay silent (thresh 0)
    return rate_encode(x, num_steps, seed=seed), y


# --------------------------------------------------------------------------- SHD


def load_shd(
    path: str | os.PathLike[str],
    num_steps: int = 100,
    max_time: float = 1.0,
    num_units: int = 700,
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Spiking Heidelberg Digits from the user's ``shd_train.h5`` / ``shd_test.h5``: rasters [N, num_steps, 700] and labels.

    Spike times (seconds) are binned into ``num_steps`` bins over ``[0, max_time)``; later spikes are dropped.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"SHD file not found: {p}. lowbit downloads nothing; get shd_train.h5 / shd_test.h5 "
            "(Cramer et al. 2020, CC-BY 4.0) from the Zenke lab and pass its path"
        )
    num_steps = _pos_int(num_steps, "num_steps")
    max_time = _pos_float(max_time, "max_time")
    try:
        import h5py
    except ImportError:
        raise ImportError("load_shd needs h5py: pip install 'lowbit[snn]'") from None
    with h5py.File(p, "r") as f:
        if "spikes" not in f or "labels" not in f:
            raise ValueError(f"{p} is not an SHD file: it needs 'spikes/times', 'spikes/units' and 'labels'")
        times, units, labels = f["spikes"]["times"], f["spikes"]["units"], np.asarray(f["labels"])
        n = len(labels) if limit is None else min(len(labels), _pos_int(limit, "limit"))
        out = torch.zeros(n, num_steps, num_units)
        dt = max_time / num_steps
        for i in range(n):  # ragged per sample
            t, u = np.asarray(times[i]), np.asarray(units[i]).astype(np.int64)
            keep = t < max_time
            t, u = t[keep], u[keep]
            if u.size and (u.min() < 0 or u.max() >= num_units):
                raise ValueError(f"{p}: sample {i} has unit ids outside [0, {num_units})")
            s = np.minimum((t / dt).astype(np.int64), num_steps - 1)
            out[i].index_put_((torch.as_tensor(s), torch.as_tensor(u)), torch.ones(len(s)), accumulate=True)
    return out, torch.as_tensor(labels[:n].astype(np.int64))


def split(x: Tensor, y: Tensor, test_frac: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shuffle and split into (x_train, y_train, x_test, y_test)."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    g = torch.Generator().manual_seed(seed)
    p = torch.randperm(len(y), generator=g)
    n_test = max(1, int(round(len(y) * test_frac)))
    te, tr = p[:n_test], p[n_test:]
    return x[tr], y[tr], x[te], y[te]
