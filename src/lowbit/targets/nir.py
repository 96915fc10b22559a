"""Export a trained (quantized) spiking network -- :class:`~lowbit.snn.SNN` or :class:`~lowbit.snn.EventPropSNN` -- to NIR.

NIR is the Neuromorphic Intermediate Representation. Weights are written as the quantized
values the forward pass uses (float values on the fixed-point grid); each weight node's
metadata holds its integer codes' scale and bit width. Neuron parameters map our discrete
update onto NIR's continuous equations so that a forward-Euler simulation with step ``dt``
reproduces it exactly:

- LIF ``mem = beta * mem + I``  ->  ``tau = dt / (1 - beta)``, ``r = tau / dt``, ``v_leak = 0``;
- exponential-current synapse ``syn = alpha * syn + S`` -> ``CubaLIF`` with
  ``tau_syn = dt / (1 - alpha)``, ``w_in = tau_syn / dt``;
- no leak (``beta = 1``) -> ``IF`` with ``r = 1``; readout ``LI`` likewise (``CubaLI`` when the
  readout has its own synapse, an EventPropSNN with ``out_tau_syn``; ``CubaLIF`` for its
  first-spike (``ttfs``) output).

NIR has no notion of state quantization, reset by subtraction, the readout over time or
EventProp's sub-step spike timing: the graph metadata records them (``reset``, ``readout``,
``state_levels<k>``, ``spike_timing``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..fileio import save_with
from ..snn.base import SpikingNetwork
from ..snn.eventprop import EventPropSNN

__all__ = ["to_nir", "export_nir"]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32)


def _tau(decay: float, dt: float) -> float:
    return dt / (1.0 - decay)


def _lif_node(nir, n: int, beta: float, alpha: float | None, thr: float, dt: float):  # type: ignore[no-untyped-def]
    full = lambda v: np.full(n, v, dtype=np.float32)  # noqa: E731
    if beta >= 1.0:
        if alpha is not None:
            raise ValueError("a non-leaky neuron with a synaptic current has no NIR node; use beta < 1")
        return nir.IF(r=full(1.0), v_threshold=full(thr), v_reset=full(0.0))
    tau_mem = _tau(beta, dt)
    if alpha is not None:
        if alpha >= 1.0:
            raise ValueError("alpha = 1 (no synaptic decay) has no NIR CubaLIF equivalent; use alpha < 1")
        tau_syn = _tau(alpha, dt)
        return nir.CubaLIF(
            tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(tau_mem / dt), v_leak=full(0.0),
            v_threshold=full(thr), v_reset=full(0.0), w_in=full(tau_syn / dt),
        )
    return nir.LIF(tau=full(tau_mem), r=full(tau_mem / dt), v_leak=full(0.0), v_threshold=full(thr), v_reset=full(0.0))


def _readout_node(nir, n: int, beta: float, alpha: float | None, dt: float):  # type: ignore[no-untyped-def]
    full = lambda v: np.full(n, v, dtype=np.float32)  # noqa: E731
    if beta >= 1.0:
        if alpha is not None:
            raise ValueError("a non-leaky readout with a synaptic current has no NIR node; use out_tau_mem < inf")
        return nir.I(r=full(1.0))
    tau = _tau(beta, dt)
    if alpha is not None:
        tau_syn = _tau(alpha, dt)
        return nir.CubaLI(tau_syn=full(tau_syn), tau_mem=full(tau), r=full(tau / dt), v_leak=full(0.0),
                          w_in=full(tau_syn / dt))
    return nir.LI(tau=full(tau), r=full(tau / dt), v_leak=full(0.0))


def _dynamics(model: SpikingNetwork) -> dict[str, object]:
    """Per hidden layer (beta, alpha or None, threshold, state levels or None), the readout's, dt, reset and readout."""
    if isinstance(model, EventPropSNN):
        c = model.cfg
        layer = (c.beta, c.alpha if c.alpha > 0 else None, c.thr, None)
        out_alpha = c.out_alpha if c.out_alpha > 0 else None
        return {
            "layers": [layer] * c.n_layers, "out": (c.out_beta, out_alpha, c.thr), "dt": model.dt,
            "reset": "subtract" if c.subtract else "zero", "readout": c.readout, "spiking_out": c.ttfs,
            "spike_timing": "sub-step: a spike that crosses a fraction phi of a step before step k is delivered as "
                            "phi at step k and 1 - phi at step k+1 (EventProp's discretisation); "
                            "the residue after a subtractive reset is capped just below threshold",
        }
    layers = []
    for neuron in model.hidden:  # type: ignore[attr-defined]
        lv = getattr(neuron.state_quant, "levels", None)
        layers.append((neuron.beta, neuron.alpha, neuron.threshold, lv if isinstance(lv, torch.Tensor) else None))
    ro = model.readout  # type: ignore[attr-defined]
    return {
        "layers": layers, "out": (ro.beta, None, 0.0), "dt": float(model.hidden[0].dt),  # type: ignore[attr-defined]
        "reset": model.hidden[0].reset, "readout": ro.readout, "spiking_out": False,  # type: ignore[attr-defined]
        "spike_timing": "the reset of a spike at step t acts at step t+1 (snnTorch order)",
    }


def to_nir(model: SpikingNetwork):  # type: ignore[no-untyped-def]
    """The NIR graph of ``model`` (an SNN or EventPropSNN), with the quantized weights it runs with."""
    try:
        import nir
    except ImportError:
        raise ImportError("NIR export needs the nir package: pip install 'lowbit[snn]'") from None
    if not isinstance(model, SpikingNetwork):
        raise TypeError(f"model must be a lowbit.snn.SNN or EventPropSNN, got {type(model).__name__}")
    with torch.no_grad():
        w = model.effective_weights()
    wq = model.weight_quant
    scales: dict[str, float] = {}
    bits: dict[str, int] = {}
    if wq is not None:
        for g, conns in wq.groups.items():
            q = wq.quantizers[g]
            s = q.scale
            for c in conns:
                scales[c] = float(s.flatten()[0]) if s.numel() == 1 else float("nan")
                bits[c] = q.bits

    def linear(name: str):  # type: ignore[no-untyped-def]
        meta = {"quantized": int(name in bits)}
        if name in bits:
            meta.update(bits=bits[name], scale=scales[name])
        return nir.Linear(weight=_np(w[name]), metadata=meta)

    dyn = _dynamics(model)
    dt = float(dyn["dt"])  # type: ignore[arg-type]
    conns = model.connections()
    nodes: dict[str, object] = {"input": nir.Input(input_type={"input": np.array([model.sizes[0]])})}
    edges: list[tuple[str, str]] = []
    prev = "input"
    for k, (beta, alpha, thr, _) in enumerate(dyn["layers"]):  # type: ignore[arg-type]
        nodes[f"fc{k}"] = linear(f"fc{k}")
        nodes[f"lif{k}"] = _lif_node(nir, model.sizes[k + 1], beta, alpha, thr, dt)
        edges += [(prev, f"fc{k}"), (f"fc{k}", f"lif{k}")]
        if f"rec{k}" in conns:
            nodes[f"rec{k}"] = linear(f"rec{k}")
            edges += [(f"lif{k}", f"rec{k}"), (f"rec{k}", f"lif{k}")]
        prev = f"lif{k}"
    n_out = model.sizes[-1]
    out_beta, out_alpha, out_thr = dyn["out"]  # type: ignore[misc]
    nodes["out"] = linear("out")
    if dyn["spiking_out"]:
        nodes["readout"] = _lif_node(nir, n_out, out_beta, out_alpha, out_thr, dt)
    else:
        nodes["readout"] = _readout_node(nir, n_out, out_beta, out_alpha, dt)
    nodes["output"] = nir.Output(output_type={"output": np.array([n_out])})
    edges += [(prev, "out"), ("out", "readout"), ("readout", "output")]
    meta: dict[str, object] = {
        "producer": "lowbit",
        "network": type(model).__name__,
        "dt": dt,
        "reset": dyn["reset"],
        "reset_timing": "the reset of a spike at step t acts at step t+1 (snnTorch order)",
        "spike_timing": dyn["spike_timing"],
        "readout": dyn["readout"],
        "weight_spec": wq.spec if wq is not None else "float32",
    }
    for k, layer in enumerate(dyn["layers"]):  # type: ignore[arg-type]
        if layer[3] is not None:
            meta[f"state_levels{k}"] = _np(layer[3])
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def export_nir(model: SpikingNetwork, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (an SNN or EventPropSNN) as a NIR (HDF5) file, atomically; returns the path."""
    import nir

    graph = to_nir(model)
    path = Path(path)
    save_with(path, lambda tmp: nir.write(str(tmp), graph))
    return path
