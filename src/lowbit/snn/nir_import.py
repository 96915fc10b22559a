"""Read a NIR graph (as snnTorch's ``export_to_nir`` writes it) into a lowbit :class:`~lowbit.snn.SNN`.

The graph must be a chain ``Input -> (Linear|Affine -> LIF|CubaLIF|IF) x N -> [Linear|Affine ->
LI|I] -> Output``. The result is an ordinary ``SNN``: it quantizes (``quantize_weights``), takes
state quantizers and trains by BPTT like any other.

Conventions (where NIR, snnTorch and lowbit differ):

- **Time constants.** NIR's neurons are continuous (``tau dv/dt = v_leak - v + r I``); a graph
  says nothing of the step. snnTorch's exporter writes ``tau = dt / (1 - beta)`` with ``dt = 1e-4``
  and ``r = tau / dt``, so forward Euler with that ``dt`` gives back its discrete neuron. lowbit
  reads ``beta = 1 - dt / tau`` (likewise ``alpha = 1 - dt / tau_syn``) with ``dt`` from
  ``from_nir(dt=...)``, else the graph's ``dt`` metadata (lowbit's own export), else snnTorch's
  1e-4. An input gain ``r dt / tau`` (times ``w_in dt / tau_syn`` for a ``CubaLIF``) other than 1
  is folded into the weights into the layer, which is the same network.
- **Reset.** NIR's ``LIF`` resets to ``v_reset`` (which must be 0): lowbit's ``reset="zero"``.
  snnTorch's ``Leaky`` resets by subtraction by default, and its exporter does not record the
  mechanism, so a graph from such a network reads with ``from_nir(..., reset="subtract")``.
  snnTorch's default ``reset_delay=True`` (the spike of step t resets at step t+1) is lowbit's order.
  snnTorch's ``Synaptic`` with ``reset_mechanism="zero"`` also drops the input of the step after a
  spike (``mem = (beta mem + syn)(1 - reset)``), unlike its ``Leaky`` and NIR's reset to
  ``v_reset``; lowbit follows NIR, so such a network's spikes differ (measured: 80-86 % agreement).
- **Readout.** A graph that ends in a spiking layer (snnTorch's usual ``... -> Leaky``) keeps that
  layer as the last hidden layer; lowbit's readout is then a fixed identity into a non-leaky
  integrator read at the last step (``readout="last"``): the logits are the output spike counts,
  as snnTorch classifies. A graph that ends in ``LI`` / ``I`` maps that to the readout directly, and
  so does a final neuron that never fires (threshold >= 1e29: lowbit's ``portable=True`` readout).
- No bias (lowbit's connections have none: a non-zero ``Affine`` bias is refused), one decay and
  one threshold per layer, ``v_leak = 0``, no recurrent subgraph. Anything else is a ValueError
  naming the node and its type.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .network import SNN
from .neurons import RESETS

__all__ = ["from_nir", "SNNTORCH_DT"]

SNNTORCH_DT = 1e-4  # the step snnTorch 1.0's exporter and importer assume
_NEVER_FIRES = 1e29  # a threshold this high is lowbit's portable readout (targets.nir.NEVER = 1e30)


def _one(value: Any, what: str, node: str) -> float:
    a = np.asarray(value, dtype=np.float64).ravel()
    if a.size == 0 or not np.allclose(a, a[0], rtol=1e-6, atol=0.0):
        raise ValueError(f"node {node!r}: {what} differs between neurons; a lowbit layer has one {what}")
    return float(a[0])


def _decay(tau: Any, dt: float, what: str, node: str) -> float:
    t = _one(tau, what, node)
    if not math.isfinite(t) or t < dt:
        raise ValueError(f"node {node!r}: {what} = {t:g} is shorter than the step dt = {dt:g} (decay would be negative)")
    return 1.0 - dt / t


def _neuron(nir, key: str, node: Any, dt: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """beta, alpha (or None), threshold (or None for a non-spiking readout) and input gain of one neuron node."""
    name = type(node).__name__
    if isinstance(node, (nir.LIF, nir.CubaLIF, nir.LI)) and not np.allclose(node.v_leak, 0.0):
        raise ValueError(f"node {key!r} ({name}): v_leak must be 0, lowbit's neurons leak towards 0")
    if isinstance(node, (nir.LIF, nir.CubaLIF, nir.IF)) and not np.allclose(node.v_reset, 0.0):
        raise ValueError(f"node {key!r} ({name}): v_reset must be 0 (lowbit resets to zero or by subtraction)")
    if isinstance(node, nir.IF):
        return {"beta": 1.0, "alpha": None, "thr": _one(node.v_threshold, "v_threshold", key), "gain": _one(node.r, "r", key)}
    if isinstance(node, nir.LIF):
        tau = _one(node.tau, "tau", key)
        return {"beta": _decay(tau, dt, "tau", key), "alpha": None, "thr": _one(node.v_threshold, "v_threshold", key),
                "gain": _one(node.r, "r", key) * dt / tau}
    if isinstance(node, nir.CubaLIF):
        tm, ts = _one(node.tau_mem, "tau_mem", key), _one(node.tau_syn, "tau_syn", key)
        gain = _one(node.r, "r", key) * dt / tm * _one(node.w_in, "w_in", key) * dt / ts
        alpha = _decay(ts, dt, "tau_syn", key)
        # tau_syn = dt (a synapse that forgets at once, lowbit's portable LIF) is the plain LIF
        return {"beta": _decay(tm, dt, "tau_mem", key), "alpha": None if abs(alpha) < 1e-6 else alpha,
                "thr": _one(node.v_threshold, "v_threshold", key), "gain": gain}
    if isinstance(node, nir.LI):
        tau = _one(node.tau, "tau", key)
        return {"beta": _decay(tau, dt, "tau", key), "alpha": None, "thr": None, "gain": _one(node.r, "r", key) * dt / tau}
    if isinstance(node, nir.I):
        return {"beta": 1.0, "alpha": None, "thr": None, "gain": _one(node.r, "r", key)}
    raise ValueError(f"node {key!r} has NIR type {name}, which lowbit's SNN import does not map "
                     "(it reads Linear/Affine connections and LIF, CubaLIF, IF, LI, I neurons)")


def _weight(nir, key: str, node: Any) -> np.ndarray:  # type: ignore[no-untyped-def]
    if isinstance(node, nir.Affine) and node.bias is not None and not np.allclose(node.bias, 0.0):
        raise ValueError(f"node {key!r} (Affine) has a non-zero bias; lowbit's SNN connections have none "
                         "(export from torch.nn.Linear(..., bias=False))")
    if isinstance(node, (nir.Linear, nir.Affine)):
        w = np.asarray(node.weight, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"node {key!r} ({type(node).__name__}): weight must be 2-D (post x pre), got shape {w.shape}")
        return w
    raise ValueError(f"node {key!r} has NIR type {type(node).__name__}, which lowbit's SNN import does not map "
                     "where a connection is expected (Linear or Affine)")


def _chain(graph: Any) -> list[str]:
    """The node keys from the input to the output, for a graph that is a simple chain."""
    nxt: dict[str, list[str]] = {}
    for a, b in graph.edges:
        nxt.setdefault(a, []).append(b)
    starts = [k for k, n in graph.nodes.items() if type(n).__name__ == "Input"]
    if len(starts) != 1:
        raise ValueError(f"graph must have one Input node, got {len(starts)}")
    order, k = [starts[0]], starts[0]
    while nxt.get(k):
        if len(nxt[k]) != 1:
            raise ValueError(f"node {k!r} feeds {nxt[k]}; lowbit's SNN import reads a feed-forward chain only")
        k = nxt[k][0]
        if k in order:
            raise ValueError(f"node {k!r} closes a cycle; recurrent graphs are not imported")
        order.append(k)
    return order


def from_nir(graph_or_path: Any, *, dt: float | None = None, reset: str | None = None) -> SNN:
    """A lowbit ``SNN`` computing the NIR graph (or NIR file) ``graph_or_path``: feed-forward, no bias (see the module docs)."""
    try:
        import nir
    except ImportError:
        raise ImportError("NIR import needs the nir package: pip install 'lowbit[snn]'") from None
    if isinstance(graph_or_path, (str, os.PathLike)):
        graph = nir.read(str(Path(graph_or_path)))
    elif isinstance(graph_or_path, nir.NIRGraph):
        graph = graph_or_path
    else:
        raise TypeError(f"graph_or_path must be a nir.NIRGraph or a path to a NIR file, got {type(graph_or_path).__name__}")
    meta = dict(graph.metadata or {})
    if dt is None:
        dt = float(meta["dt"]) if "dt" in meta else SNNTORCH_DT
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number (NIR time per step), got {dt!r}")
    reset = str(meta.get("reset", "zero")) if reset is None else reset
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    keys = [k for k in _chain(graph) if type(graph.nodes[k]).__name__ not in ("Input", "Output")]
    if len(keys) < 2 or len(keys) % 2:
        raise ValueError(f"graph must alternate connection and neuron nodes, got {[type(graph.nodes[k]).__name__ for k in keys]}")
    weights, neurons = [], []
    for i in range(0, len(keys), 2):
        weights.append(_weight(nir, keys[i], graph.nodes[keys[i]]))
        neurons.append(_neuron(nir, keys[i + 1], graph.nodes[keys[i + 1]], float(dt)))
        if neurons[-1]["thr"] is None and i + 2 < len(keys):
            raise ValueError(f"node {keys[i + 1]!r} ({type(graph.nodes[keys[i + 1]]).__name__}) is a non-spiking "
                             "readout; it can only be the last neuron node")
    for i in range(1, len(weights)):
        if weights[i].shape[1] != weights[i - 1].shape[0]:
            raise ValueError(f"node {keys[2 * i]!r}: weight takes {weights[i].shape[1]} inputs but the layer before has "
                             f"{weights[i - 1].shape[0]} neurons")
    last = neurons[-1]
    if last["thr"] is not None and last["thr"] >= _NEVER_FIRES:
        # lowbit's portable readout: a CubaLIF that never fires and whose synapse forgets at once is the LI
        if last["alpha"] is not None:
            raise ValueError(f"node {keys[-1]!r}: a never-firing readout with a synaptic current (alpha = "
                             f"{last['alpha']:g}) has no lowbit readout; lowbit's LI has no synapse")
        last["thr"] = None
    spiking_out = last["thr"] is not None
    hidden = neurons if spiking_out else neurons[:-1]
    if not hidden:
        raise ValueError("graph has no spiking layer (LIF, CubaLIF or IF)")
    n_out = weights[-1].shape[0]
    sizes = [w.shape[0] for w in weights[: len(hidden)]]
    ro = {"beta": 1.0, "gain": 1.0} if spiking_out else neurons[-1]
    # a non-leaky integrator's last value is the spike count: the readout of a spiking output layer
    readout = "last" if spiking_out else str(meta.get("readout", "mean"))
    m = SNN(weights[0].shape[1], sizes, n_out, recurrent=False, beta=0.5, threshold=1.0, reset=reset,
            readout=readout, out_beta=ro["beta"])
    with torch.no_grad():
        for k, (w, nrn) in enumerate(zip(weights, hidden)):
            m.fc[k].copy_(torch.from_numpy(w * np.float32(nrn["gain"])))
            lif = m.hidden[k]
            if not (nrn["thr"] > 0 and math.isfinite(nrn["thr"])):
                raise ValueError(f"node {keys[2 * k + 1]!r}: v_threshold must be a positive number, got {nrn['thr']!r}")
            lif.beta, lif.alpha, lif.threshold = nrn["beta"], nrn["alpha"], nrn["thr"]
        if spiking_out:
            # the last spiking layer's spikes, counted over time: identity weights, fixed
            m.w_out.copy_(torch.eye(n_out))
            m.w_out.requires_grad_(False)
        else:
            m.w_out.copy_(torch.from_numpy(weights[-1] * np.float32(ro["gain"])))
    return m
