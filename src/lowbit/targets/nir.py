"""Export a trained (quantized) :class:`~lowbit.snn.SNN` to NIR, the Neuromorphic Intermediate Representation.

Weights are written as the quantized values the forward pass uses (float values
on the fixed-point grid); each weight node's metadata holds its integer codes'
scale and bit width. Neuron parameters map our discrete update onto NIR's
continuous equations so that a forward-Euler simulation with step ``dt``
reproduces it exactly:

- LIF ``mem = beta * mem + I``  ->  ``tau = dt / (1 - beta)``, ``r = tau / dt``, ``v_leak = 0``;
- exponential-current synapse ``syn = alpha * syn + S`` -> ``CubaLIF`` with
  ``tau_syn = dt / (1 - alpha)``, ``w_in = tau_syn / dt``;
- no leak (``beta = 1``) -> ``IF`` with ``r = 1``; readout ``LI`` likewise.

NIR has no notion of state quantization, reset by subtraction or the readout over
time: the graph metadata records them (``reset``, ``readout``, ``state_levels``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..fileio import save_with
from ..snn.network import SNN
from ..snn.neurons import LIF, RLIF

__all__ = ["to_nir", "export_nir"]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32)


def _tau(decay: float, dt: float) -> float:
    return dt / (1.0 - decay)


def _neuron_node(nir, neuron: LIF, n: int):  # type: ignore[no-untyped-def]
    full = lambda v: np.full(n, v, dtype=np.float32)  # noqa: E731
    dt = neuron.dt
    thr = full(neuron.threshold)
    if neuron.beta >= 1.0:
        if neuron.synaptic:
            raise ValueError("a non-leaky neuron with a synaptic current has no NIR node; use beta < 1")
        return nir.IF(r=full(1.0), v_threshold=thr, v_reset=full(0.0))
    tau_mem = _tau(neuron.beta, dt)
    if neuron.synaptic:
        assert neuron.alpha is not None
        if neuron.alpha >= 1.0:
            raise ValueError("alpha = 1 (no synaptic decay) has no NIR CubaLIF equivalent; use alpha < 1")
        tau_syn = _tau(neuron.alpha, dt)
        return nir.CubaLIF(
            tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(tau_mem / dt), v_leak=full(0.0),
            v_threshold=thr, v_reset=full(0.0), w_in=full(tau_syn / dt),
        )
    return nir.LIF(tau=full(tau_mem), r=full(tau_mem / dt), v_leak=full(0.0), v_threshold=thr, v_reset=full(0.0))


def to_nir(model: SNN):  # type: ignore[no-untyped-def]
    """The NIR graph of ``model``, with the quantized weights it runs with."""
    try:
        import nir
    except ImportError:
        raise ImportError("NIR export needs the nir package: pip install 'lowbit[snn]'") from None
    if not isinstance(model, SNN):
        raise TypeError(f"model must be a lowbit.snn.SNN, got {type(model).__name__}")
    with torch.no_grad():
        w = model.effective_weights()
    scales: dict[str, float] = {}
    bits = 0
    if model.weight_quant is not None:
        bits = model.weight_quant.quantizers[next(iter(model.weight_quant.groups))].bits
        for g, conns in model.weight_quant.groups.items():
            s = model.weight_quant.quantizers[g].scale
            for c in conns:
                scales[c] = float(s.flatten()[0]) if s.numel() == 1 else float("nan")

    def linear(name: str):  # type: ignore[no-untyped-def]
        meta = {"quantized": int(bits > 0)}
        if bits:
            meta.update(bits=bits, scale=scales.get(name, float("nan")))
        return nir.Linear(weight=_np(w[name]), metadata=meta)

    nodes: dict[str, object] = {"input": nir.Input(input_type={"input": np.array([model.sizes[0]])})}
    edges: list[tuple[str, str]] = []
    prev = "input"
    for k, neuron in enumerate(model.hidden):
        n = model.sizes[k + 1]
        nodes[f"fc{k}"] = linear(f"fc{k}")
        nodes[f"lif{k}"] = _neuron_node(nir, neuron, n)
        edges += [(prev, f"fc{k}"), (f"fc{k}", f"lif{k}")]
        if isinstance(neuron, RLIF):
            nodes[f"rec{k}"] = linear(f"rec{k}")
            edges += [(f"lif{k}", f"rec{k}"), (f"rec{k}", f"lif{k}")]
        prev = f"lif{k}"
    n_out = model.sizes[-1]
    ro = model.readout
    nodes["out"] = linear("out")
    full = lambda v: np.full(n_out, v, dtype=np.float32)  # noqa: E731
    if ro.beta >= 1.0:
        nodes["readout"] = nir.I(r=full(1.0))
    else:
        tau = _tau(ro.beta, ro.dt)
        nodes["readout"] = nir.LI(tau=full(tau), r=full(tau / ro.dt), v_leak=full(0.0))
    nodes["output"] = nir.Output(output_type={"output": np.array([n_out])})
    edges += [(prev, "out"), ("out", "readout"), ("readout", "output")]
    meta: dict[str, object] = {
        "producer": "lowbit",
        "dt": float(model.hidden[0].dt),
        "reset": model.hidden[0].reset,
        "reset_timing": "the reset of a spike at step t acts at step t+1 (snnTorch order)",
        "readout": ro.readout,
        "weight_spec": model.weight_quant.spec if model.weight_quant is not None else "float32",
    }
    for k, neuron in enumerate(model.hidden):
        lv = getattr(neuron.state_quant, "levels", None)
        if isinstance(lv, torch.Tensor):
            meta[f"state_levels{k}"] = _np(lv)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def export_nir(model: SNN, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a NIR (HDF5) file, atomically; returns the path."""
    import nir

    graph = to_nir(model)
    path = Path(path)
    save_with(path, lambda tmp: nir.write(str(tmp), graph))
    return path
