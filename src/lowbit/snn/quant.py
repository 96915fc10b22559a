"""Quantization for spiking networks: weights per connection or per population, and neuron states.

Weights (mlGeNN semantics, without its one-batch lag). :class:`WeightQuant` holds
one :class:`~lowbit.Quantizer` per *group*: a connection (``scope="connection"``)
or every connection into one population (``scope="population"``: feed-forward and
recurrent weights into a layer share one scale, ``Quantizer.fit([w_ff, w_rec])``).
At every forward pass it refits each group's scale to the current float shadow
weights and returns ``Q(w)`` with a straight-through gradient, once for the whole
sequence (never per time step); the optimizer steps the shadow weights. Groups
whose weights are all frozen (``requires_grad=False``) are quantized once and
cached until their values change.

States (SQUAT, snnTorch ``state_quant``): :func:`state_levels` gives the uniform,
threshold-centred or zero-centred level set of :mod:`lowbit.codebooks` (snnTorch's
construction); :class:`StateQuantizer` rounds to the nearest level by
``bucketize`` on the midpoints (O(log L), no [N, L] tensor), passes the gradient
straight through, and counts clipped states. :func:`calibrate_state_range` turns an
observed membrane distribution into ``lower_limit`` / ``upper_limit``.

Checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`) hold the float
shadow weights and the quantized weights (as QTensors), so resumed training keeps
full precision and deployment reads the integers.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..formats import state_levels as _cb_state_levels
from ..formats import Codebook
from ..qtensor import QTensor, load_qtensors, save_qtensors
from ..quantizer import Quantizer, quantizer

__all__ = [
    "WeightQuant",
    "StateQuantizer",
    "state_levels",
    "state_quantizer",
    "calibrate_state_range",
    "save_checkpoint",
    "load_checkpoint",
    "SCOPES",
    "QuantizedConnections",
    "STATE_KINDS",
]

SCOPES = ("population", "connection")
STATE_KINDS = ("uniform", "thr", "zero")



# --------------------------------------------------------------------------- weights


class WeightQuant(nn.Module):
    """Fake-quantizes named weights in groups that share a scale, once per forward pass."""

    def __init__(self, groups: Mapping[str, Sequence[str]], spec: str = "fxp8:p99") -> None:
        super().__init__()
        if not isinstance(groups, Mapping) or not groups:
            raise ValueError("groups must be a non-empty mapping of group name -> connection names")
        seen: set[str] = set()
        for g, names in groups.items():
            if not names:
                raise ValueError(f"groups[{g!r}] holds no connection")
            dup = seen.intersection(names)
            if dup:
                raise ValueError(f"connection(s) {sorted(dup)} appear in more than one group")
            seen.update(names)
        self.spec = spec
        self.groups = {str(g): list(n) for g, n in groups.items()}
        self.quantizers = nn.ModuleDict({g: quantizer(spec) for g in self.groups})
        self._static: dict[str, tuple[tuple[int, ...], dict[str, Tensor]]] = {}

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, groups={self.groups}"

    def forward(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Quantized weights by name (straight-through to the float ones); names outside the groups pass as is."""
        out = dict(weights)
        for g, names in self.groups.items():
            missing = [n for n in names if n not in weights]
            if missing:
                raise ValueError(f"weights lacks connection(s) {missing} of group {g!r}")
            ws = [weights[n] for n in names]
            static = not any(w.requires_grad for w in ws)
            key = tuple(w._version for w in ws) + tuple(w.data_ptr() for w in ws)
            if static and g in self._static and self._static[g][0] == key:
                out.update(self._static[g][1])
                continue
            q: Quantizer = self.quantizers[g]  # type: ignore[assignment]
            q.fit([w.detach() for w in ws])  # refit the scale to the current shadow weights
            res = {n: q(w) for n, w in zip(names, ws)}
            if static:
                res = {n: v.detach() for n, v in res.items()}
                self._static[g] = (key, res)
            out.update(res)
        return out

    def encode(self, weights: Mapping[str, Tensor]) -> dict[str, QTensor]:
        """Integer codes of every grouped weight (scales fitted per group as in forward)."""
        out: dict[str, QTensor] = {}
        for g, names in self.groups.items():
            q: Quantizer = self.quantizers[g]  # type: ignore[assignment]
            q.fit([weights[n].detach() for n in names])
            for n in names:
                qt = q.encode(weights[n].detach())
                # population members would share the quantizer's scale tensor, which safetensors refuses to save
                qt.scale = qt.scale.clone()
                out[n] = qt
        return out

    def scales(self) -> dict[str, Tensor]:
        """The last fitted scale of every group."""
        return {g: q.scale.clone() for g, q in self.quantizers.items()}


class QuantizedConnections:
    """Weight quantization for a spiking network that names its weights with ``connections()``.

    Connections are ``fc<k>`` (into hidden layer ``k``), ``rec<k>`` (its recurrence) and ``out``;
    a population is a layer of neurons with every connection into it. Mixed into
    :class:`~lowbit.snn.SNN` and :class:`~lowbit.snn.eventprop.EventPropSNN`.
    """

    weight_quant: "WeightQuant | None"  # set in the network's __init__ (no class default: nn.Module keeps submodules apart)

    def connections(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def populations(self) -> dict[str, list[str]]:
        """Target population -> the connections into it (feed-forward and recurrent together)."""
        conns = self.connections()
        n_layers = sum(c.startswith("fc") for c in conns)
        out = {f"hidden{k}": [c for c in (f"fc{k}", f"rec{k}") if c in conns] for k in range(n_layers)}
        out["out"] = ["out"]
        return out

    def quantize_weights(self, spec: str | None = "fxp8:p99", scope: str = "population"):  # type: ignore[no-untyped-def]
        """Fake-quantize weights with ``spec`` per population (shared scale) or per connection; None removes it."""
        if spec is None:
            self.weight_quant = None
            return self
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        groups = self.populations() if scope == "population" else {c: [c] for c in self.connections()}
        self.weight_quant = WeightQuant(groups, spec)
        return self

    def effective_weights(self) -> dict[str, Tensor]:
        """The weights the forward pass uses: quantized (straight-through) when weight quantization is on."""
        w = self.connections()
        return self.weight_quant(w) if self.weight_quant is not None else w


# --------------------------------------------------------------------------- states


def _num(x: object, name: str, *, positive: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    if positive and x <= 0:
        raise ValueError(f"{name} must be > 0, got {x!r}")
    return float(x)


def state_levels(
    kind: str,
    num_bits: int,
    threshold: float = 1.0,
    lower_limit: float = 0.0,
    upper_limit: float = 0.2,
    multiplier: float | None = None,
) -> Tensor:
    """Sorted state levels in ``[-thr(1+lower_limit), thr(1+upper_limit)]`` (snnTorch's construction), as a tensor.

    ``uniform``: ``2^b`` evenly spaced levels, both ends included; ``thr`` / ``zero``:
    exponentially spaced, densest next to the threshold / zero. The level sets are
    :func:`lowbit.codebooks.state_levels`'s (one construction in the project).
    """
    if kind not in STATE_KINDS:
        raise ValueError(f"kind must be one of {STATE_KINDS}, got {kind!r}")
    return _cb_state_levels(kind, num_bits, threshold, lower_limit, upper_limit, multiplier).levels.clone()


def _boundary_points(levels: Tensor) -> tuple[Tensor, Tensor]:
    """Every midpoint and the float32 just above it, with the nearest-level reference there (ties to the lower)."""
    lv = levels.float()
    mids = (lv[1:] + lv[:-1]) / 2
    pts = torch.cat([mids, torch.nextafter(mids, torch.tensor(math.inf)), lv[:1], lv[-1:]])
    return pts, lv[torch.bucketize(pts, mids)]


def _exact(rounder, levels: Tensor) -> bool:  # type: ignore[no-untyped-def]
    """True when ``rounder`` equals nearest-level rounding for every float32.

    ``rounder`` and the reference are both monotone in ``x``, so they agree
    everywhere if they agree at each midpoint and at the float32 just above it.
    """
    pts, ref = _boundary_points(levels)
    return bool(torch.equal(rounder(pts), ref))


def _bins(x: Tensor, terms: Sequence[tuple[float, float, int]]) -> Tensor:
    """Table row of every element: a sum of clamped affine bin indices (monotone in ``x``)."""
    if len(terms) == 1:
        a, b, n = terms[0]
        return x.mul(a).add_(b).clamp_(0, n - 1).int()  # clamped to >= 0, so truncation is the floor
    j = None
    for a, b, n in terms:
        t = x.mul(a).add_(b).floor_().clamp_(0, n - 1)
        j = t if j is None else j.add_(t)
    return j.int()  # type: ignore[union-attr]


def _lut(levels: Tensor, max_bins: int = 1 << 16, max_terms: int = 3) -> tuple[list[tuple[float, float, int]], Tensor] | None:
    """Look-up table for exact nearest-level rounding in O(1) per element, or None if it would be too large.

    A state's row is :func:`_bins` -- one affine bin index over the whole range,
    plus finer ones over the regions where levels crowd (next to the threshold
    for threshold-centred levels) -- so that no row holds two midpoints. A state
    in a row rounds to its upper level if it is above the row's midpoint (+inf
    when the row holds none), else to its lower level. The midpoints' rows are
    computed with the same float32 operations, so the result equals ``bucketize``
    (and :func:`_exact` checks it).
    """
    lv = levels.float()
    mids = (lv[1:] + lv[:-1]) / 2
    terms: list[tuple[float, float, int]] = []
    region = mids
    while len(terms) < max_terms and region.numel():
        span = float(region[-1] - region[0]) if region.numel() > 1 else 1.0
        gaps = region[1:] - region[:-1]
        min_gap = float(gaps.min()) if gaps.numel() else 1.0
        if not (span > 0 and min_gap > 0):
            return None
        bins = max(8, 2 * math.ceil(span / min_gap))
        while True:
            a = torch.tensor(min(bins, max_bins) / span, dtype=torch.float32)
            trial = terms + [(float(a), float(2.0 - region[0] * a), min(bins, max_bins) + 5)]
            n = sum(t[2] - 1 for t in trial) + 1
            counts = torch.bincount(_bins(mids, trial).long(), minlength=n)
            if int(counts.max()) <= 1 or bins >= max_bins:
                break
            bins *= 2
        terms = trial
        jm = _bins(mids, terms).long()
        if int(counts.max()) <= 1:
            below = torch.cumsum(counts, 0) - counts  # midpoints in earlier rows = index of the lower level
            has = torch.full((n,), math.inf)
            has[jm] = mids
            lo = lv[below]
            hi = torch.where(counts > 0, lv[(below + 1).clamp(max=lv.numel() - 1)], lo)
            # (midpoint, lower, upper, pad) as float32, packed into one 16-byte element per row
            packed = torch.stack([has, lo, hi, torch.zeros(n)], 1).contiguous().view(torch.complex128).reshape(n)
            table = (terms, packed)
            return table if _exact(lambda x: _lut_round(x, table), lv) else None
        region = mids[counts[jm] > 1]  # the crowded midpoints get a finer index of their own
    return None


def _lut_round(x: Tensor, table: tuple[list[tuple[float, float, int]], Tensor]) -> Tensor:
    terms, packed = table
    # one gather of 16-byte rows by int32 index (cheaper than an int64 take): midpoint, lower, upper, pad
    mid, lo, hi, _ = packed.index_select(0, _bins(x, terms).reshape(-1)).view(torch.float32).view(-1, 4).unbind(1)
    return torch.where(x.reshape(-1) > mid, hi, lo).view(x.shape)


class _NearestLevel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, rounder) -> Tensor:  # type: ignore[no-untyped-def, override]
        return rounder(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None  # identity straight-through estimator, no clipping mask


class StateQuantizer(nn.Module):
    """Rounds states to the nearest of a fixed level set; straight-through gradient; counts clipped states.

    Ties go to the lower level (as ``bucketize`` on the midpoints). Rounding uses a
    look-up table (:func:`_lut`: exact, O(1) per element, no [N, L] tensor, one
    gather and a few elementwise passes), or ``bucketize`` for other dtypes and
    devices and for level sets no small table resolves.
    """

    levels: Tensor
    mids: Tensor

    def __init__(self, levels: Sequence[float] | Tensor, *, kind: str = "custom", num_bits: int | None = None) -> None:
        super().__init__()
        fmt = Codebook(levels)  # validates: >= 2 levels, finite, strictly increasing
        self.register_buffer("levels", fmt.levels.clone(), persistent=False)
        self.register_buffer("mids", (fmt.levels[1:] + fmt.levels[:-1]) / 2, persistent=False)
        self._table = _lut(self.levels)
        self.kind = kind
        self.num_bits = num_bits if num_bits is not None else fmt.bits
        self.track = False
        self.n_seen = 0
        self.n_clipped = 0

    @property
    def lo(self) -> float:
        """Lowest level."""
        return float(self.levels[0])

    @property
    def hi(self) -> float:
        """Highest level."""
        return float(self.levels[-1])

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_bits={self.num_bits}, range=[{self.lo:.4g}, {self.hi:.4g}]"

    def round(self, x: Tensor) -> Tensor:
        """Nearest level of every element, no gradient bookkeeping (float32 on CPU: a table; other dtypes: bucketize)."""
        if self._table is None or x.dtype != torch.float32 or x.device.type != "cpu":
            return self.levels.to(x)[torch.bucketize(x, self.mids.to(x))]
        return _lut_round(x, self._table)

    def forward(self, x: Tensor) -> Tensor:
        """Nearest level of every element (ties to the lower level); gradient passes straight through."""
        if self.track:
            with torch.no_grad():
                self.n_seen += x.numel()
                self.n_clipped += int(((x < self.levels[0]) | (x > self.levels[-1])).sum())
        return _NearestLevel.apply(x, self.round)

    def rounder(self):  # type: ignore[no-untyped-def]
        """The plain rounding function for a neuron to apply inside its own update, or None while counting clips."""
        return None if self.track else self.round

    def start_tracking(self) -> None:
        """Reset the clip counters and start counting."""
        self.track, self.n_seen, self.n_clipped = True, 0, 0

    def stop_tracking(self) -> float:
        """Stop counting; return the fraction of states that fell outside the level range."""
        self.track = False
        return self.n_clipped / self.n_seen if self.n_seen else 0.0


def state_quantizer(
    kind: str,
    num_bits: int,
    threshold: float = 1.0,
    lower_limit: float = 0.0,
    upper_limit: float = 0.2,
    multiplier: float | None = None,
) -> StateQuantizer:
    """A ready state quantizer (``uniform``, ``thr`` or ``zero``-centred levels); defaults = snnTorch's."""
    lv = state_levels(kind, num_bits, threshold, lower_limit, upper_limit, multiplier)
    return StateQuantizer(lv, kind=kind, num_bits=num_bits)


def calibrate_state_range(
    mem: Tensor, threshold: float = 1.0, lower_pct: float = 0.5, upper_pct: float = 99.5, min_headroom: float = 0.05
) -> tuple[float, float]:
    """``(lower_limit, upper_limit)`` covering the observed potentials from ``lower_pct`` to ``upper_pct``.

    The top is kept at least ``min_headroom * threshold`` above the threshold and the
    bottom at or below zero, so the threshold (and rest) stay inside the range.
    """
    if not isinstance(mem, Tensor) or mem.numel() == 0:
        raise ValueError("mem must be a non-empty tensor of observed membrane potentials")
    if not torch.isfinite(mem).all():
        raise ValueError("mem contains NaN or Inf values")
    thr = _num(threshold, "threshold", positive=True)
    if not 0 <= lower_pct < upper_pct <= 100:
        raise ValueError(f"need 0 <= lower_pct < upper_pct <= 100, got {lower_pct}, {upper_pct}")
    flat = mem.detach().flatten().float()
    if flat.numel() > 4_000_000:  # torch.quantile's size limit; a strided subsample is plenty
        flat = flat[:: flat.numel() // 4_000_000 + 1]
    q = torch.quantile(flat, torch.tensor([lower_pct / 100, upper_pct / 100]))
    lo = min(float(q[0]), 0.0)
    hi = max(float(q[1]), thr * (1.0 + min_headroom))
    if lo == 0.0:
        lo = -thr * min_headroom
    return -lo / thr - 1.0, hi / thr - 1.0


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """Write the float shadow parameters and (if the model quantizes weights) the quantized weights."""
    tensors: dict[str, Tensor | QTensor] = {f"shadow.{n}": p.detach() for n, p in model.named_parameters()}
    wq = getattr(model, "weight_quant", None)
    meta = dict(metadata or {})
    if isinstance(wq, WeightQuant):
        conns = model.connections()  # type: ignore[operator]
        for n, qt in wq.encode(conns).items():
            tensors[f"quant.{n}"] = qt
        meta["weight_spec"] = wq.spec
        meta["weight_groups"] = json.dumps(wq.groups)
    save_qtensors(path, tensors, meta)


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str], weights: str = "shadow") -> dict[str, str]:
    """Load a checkpoint into ``model``: ``weights='shadow'`` (resume) or ``'quantized'`` (deploy); returns metadata."""
    if weights not in ("shadow", "quantized"):
        raise ValueError(f"weights must be 'shadow' or 'quantized', got {weights!r}")
    entries, meta = load_qtensors(path, with_metadata=True)
    params = dict(model.named_parameters())
    shadow = {k[len("shadow."):]: v for k, v in entries.items() if k.startswith("shadow.")}
    if set(shadow) != set(params):
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {sorted(set(params) - set(shadow))}, "
            f"unexpected {sorted(set(shadow) - set(params))}"
        )
    quant = {k[len("quant."):]: v for k, v in entries.items() if k.startswith("quant.")}
    if weights == "quantized" and not quant:
        raise ValueError(f"checkpoint {path} holds no quantized weights (the model was saved without weight quantization)")
    conn_param = getattr(model, "connection_params", lambda: {})()
    with torch.no_grad():
        for n, p in params.items():
            v = shadow[n]
            if v.shape != p.shape:
                raise ValueError(f"parameter {n!r}: checkpoint shape {tuple(v.shape)} != model shape {tuple(p.shape)}")
            p.copy_(v)
        if weights == "quantized":
            for conn, qt in quant.items():
                pname = conn_param.get(conn, conn)
                if pname not in params:
                    raise ValueError(f"quantized weight {conn!r} has no parameter in the model")
                params[pname].copy_(qt.dequantize() if isinstance(qt, QTensor) else qt)
    return meta
