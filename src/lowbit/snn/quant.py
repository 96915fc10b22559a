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
threshold-centred or zero-centred level set of :func:`lowbit.formats.state_levels`
(snnTorch's construction); :class:`StateQuantizer` (:mod:`lowbit.quantizers.state`)
rounds to the nearest level with the codebook's exact look-up table (O(1), no [N, L]
tensor), passes the gradient straight through, and counts clipped states.
:func:`calibrate_state_range` (:mod:`lowbit.ranges.state`) turns an observed membrane
distribution into ``lower_limit`` / ``upper_limit``.

Checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`) hold the float
shadow weights and the quantized weights (as QTensors), so resumed training keeps
full precision and deployment reads the integers.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..formats import STATE_KINDS
from ..formats import state_levels as _cb_state_levels
from ..quantizers.state import StateQuantizer
from ..ranges.state import calibrate_state_range
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
# One implementation in the core: the levels (lowbit.formats.state_levels), the exact
# rounding (the Codebook's look-up table), the module (lowbit.quantizers.StateQuantizer)
# and the calibration (lowbit.ranges.calibrate_state_range, also the ``state`` range).


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
    :func:`lowbit.formats.state_levels`'s (one construction in the project).
    """
    if kind not in STATE_KINDS:
        raise ValueError(f"kind must be one of {STATE_KINDS}, got {kind!r}")
    return _cb_state_levels(kind, num_bits, threshold, lower_limit, upper_limit, multiplier).levels.clone()


def state_quantizer(
    kind: str,
    num_bits: int,
    threshold: float = 1.0,
    lower_limit: float = 0.0,
    upper_limit: float = 0.2,
    multiplier: float | None = None,
) -> StateQuantizer:
    """A ready state quantizer (``uniform``, ``thr`` or ``zero``-centred levels); defaults = snnTorch's."""
    fmt = _cb_state_levels(kind, num_bits, threshold, lower_limit, upper_limit, multiplier)
    return StateQuantizer(fmt, kind=kind, num_bits=num_bits)


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
