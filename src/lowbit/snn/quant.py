"""Quantization for spiking networks: weights per connection or per population, and neuron states.

Weights (mlGeNN PR #88's semantics: ``g <- Q(gBack)`` at the start of every batch). :class:`WeightQuant` holds
one :class:`~lowbit.Quantizer` per *group*: a connection (``scope="connection"``)
or every connection into one population (``scope="population"``: feed-forward and
recurrent weights into a layer share one scale, ``Quantizer.fit([w_ff, w_rec])``).
At every forward pass it refits each group's scale to the current float shadow
weights and returns ``Q(w)`` with a straight-through gradient, once for the whole
sequence (never per time step); the optimizer steps the shadow weights. (mlGeNN's
EventProp applies each gradient one batch late and routes errors through the float
weights: :class:`~lowbit.snn.eventprop.EventPropSNN`'s ``gradient_timing`` and
``error_routing``; its default scope is mlGeNN's EventProp one, per connection.) Groups
whose weights are all frozen (``requires_grad=False``) are quantized once and
cached until their values change.

States (SQUAT, snnTorch ``state_quant``): :func:`state_levels` gives the uniform,
threshold-centred or zero-centred level set of :func:`lowbit.formats.state_levels`
(snnTorch's construction); :class:`StateQuantizer` (:mod:`lowbit.quantizers.state`)
rounds to the nearest level with the codebook's exact look-up table (O(1), no [N, L]
tensor), passes the gradient straight through, and counts clipped states.
:func:`calibrate_state_range` (:mod:`lowbit.ranges.state`) turns an observed membrane
distribution into ``lower_limit`` / ``upper_limit``.

After :meth:`WeightQuant.convert_` (``lowbit.convert``) the integer codes are fixed: the
connections hold their dequantized values and the forward pass uses them as they are.

Files: ``lowbit.save`` / ``lowbit.load`` (:mod:`lowbit.snn.verbs`). ``save_checkpoint`` /
``load_checkpoint`` are deprecated wrappers over them, importable here as before.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..formats import STATE_KINDS
from ..formats import state_levels as _cb_state_levels
from ..quantizers.state import StateQuantizer
from ..ranges.state import calibrate_state_range
from ..qtensor import QTensor
from ..quantizer import Quantizer, quantizer
from ..signatures import parameters_of

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
    """Fake-quantizes named weights in groups that share a scale, once per forward pass.

    ``spec`` is one spec for every group, or a mapping group -> spec.
    """

    def __init__(self, groups: Mapping[str, Sequence[str]], spec: str | Mapping[str, str] = "fxp8:p99") -> None:
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
        self.groups = {str(g): list(n) for g, n in groups.items()}
        specs = {g: spec for g in self.groups} if isinstance(spec, str) else {str(g): s for g, s in dict(spec).items()}
        if set(specs) != set(self.groups) or not all(isinstance(v, str) for v in specs.values()):
            raise ValueError(f"spec must be one spec string or one per group {sorted(self.groups)}, got {spec!r}")
        self.specs = {g: specs[g] for g in self.groups}
        # one spec for all (the usual case) reads as that spec; mixed specs as 'group=spec' items
        same = len(set(self.specs.values())) == 1
        self.spec = next(iter(self.specs.values())) if same else ",".join(f"{g}={v}" for g, v in self.specs.items())
        self.quantizers = nn.ModuleDict({g: quantizer(self.specs[g]) for g in self.groups})
        self.qweights: dict[str, QTensor] | None = None  # the fixed integer weights once converted
        self._static: dict[str, tuple[tuple[int, ...], dict[str, Tensor]]] = {}

    @property
    def converted(self) -> bool:
        """True once the integer weights are fixed (:meth:`convert_`)."""
        return self.qweights is not None

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, groups={self.groups}" + (", converted" if self.converted else "")

    def forward(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Quantized weights by name (straight-through to the float ones); names outside the groups pass as is."""
        out = dict(weights)
        for g, names in self.groups.items():
            missing = [n for n in names if n not in weights]
            if missing:
                raise ValueError(f"weights lacks connection(s) {missing} of group {g!r}")
            if self.converted:
                continue  # the connections hold their dequantized integer weights already
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
        """Integer codes of every grouped weight (scales fitted per group as in forward; the fixed ones once converted)."""
        if self.qweights is not None:
            return dict(self.qweights)
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

    @torch.no_grad()
    def convert_(self, weights: Mapping[str, Tensor]) -> dict[str, QTensor]:
        """Fix the integer weights of ``weights`` and write their dequantized values into them; returns the codes."""
        return self.set_qweights(self.encode(weights), weights)

    @torch.no_grad()
    def set_qweights(self, qweights: Mapping[str, QTensor], weights: Mapping[str, Tensor]) -> dict[str, QTensor]:
        """Adopt fixed integer weights (a converted model's, or a file's): ``weights`` take their dequantized values."""
        names = [n for ns in self.groups.values() for n in ns]
        missing = [n for n in names if n not in qweights or n not in weights]
        if missing:
            raise ValueError(f"qweights and weights must hold every grouped connection; missing {missing}")
        for n in names:
            w, v = weights[n], qweights[n].dequantize()
            if v.shape != w.shape:
                raise ValueError(f"connection {n!r}: integer weights of shape {tuple(v.shape)} != {tuple(w.shape)}")
            w.copy_(v)
            w.requires_grad_(False)  # integer weights are not trained further
        for g, ns in self.groups.items():  # the group's scale, for readers of scales()
            self.quantizers[g].set_scale(qweights[ns[0]].scale)
        self.qweights = {n: qweights[n] for n in names}
        self._static.clear()
        return dict(self.qweights)


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


@parameters_of(_cb_state_levels)  # kind, num_bits, threshold, lower_limit, upper_limit, multiplier
def state_levels(**a: Any) -> Tensor:
    """Sorted state levels in ``[-thr(1+lower_limit), thr(1+upper_limit)]`` (snnTorch's construction), as a tensor.

    ``uniform``: ``2^b`` evenly spaced levels, both ends included; ``thr`` / ``zero``:
    exponentially spaced, densest next to the threshold / zero. The level sets are
    :func:`lowbit.formats.state_levels`'s (one construction in the project).
    """
    return _cb_state_levels(**a).levels.clone()  # it checks kind and every limit


@parameters_of(_cb_state_levels)
def state_quantizer(**a: Any) -> StateQuantizer:
    """A ready state quantizer (``uniform``, ``thr`` or ``zero``-centred levels); defaults = snnTorch's."""
    return StateQuantizer(_cb_state_levels(**a), kind=a["kind"], num_bits=a["num_bits"])


# --------------------------------------------------------------------------- checkpoints


def __getattr__(name: str) -> object:
    # the deprecated checkpoint functions live with the verbs they wrap (snn/verbs.py imports this module)
    if name in ("save_checkpoint", "load_checkpoint"):
        return getattr(importlib.import_module("lowbit.snn.verbs"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
