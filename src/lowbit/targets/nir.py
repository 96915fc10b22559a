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

Read by real simulators (``tests/test_nir_clients.py``: snnTorch 1.0's ``import_from_nir`` and
Norse 1.1's ``from_nir`` give the same spikes and readout potential as lowbit):

- ``portable=True`` writes only what both readers map. Neither maps ``LI``/``CubaLI``: the readout
  becomes a ``CubaLIF`` with threshold :data:`NEVER` (its potential is the readout's; read it from the
  reader's state, e.g. snnTorch's ``readout.mem``, Norse's ``state.state["readout"][0][1].v``).
  Norse ignores a ``LIF`` node's ``r``, so every LIF becomes a ``CubaLIF`` whose synapse forgets at
  once (``tau_syn = dt``, ``w_in = 1``), whose ``r`` Norse applies. snnTorch's importer rewrites a
  top-level ``LIF <-> Linear`` cycle into a subgraph whose input feeds the recurrent weights rather
  than the neurons, so a recurrent layer is written as that subgraph itself, correctly wired.
- Time constants: ``tau = dt / (1 - beta)`` with ``dt`` in NIR's time unit. lowbit's steps have no
  unit, so ``to_nir(dt=...)`` chooses it; snnTorch's importer assumes ``dt = 1e-4`` (s) and reads
  ``beta = 1 - 1e-4 / tau``, Norse takes ``from_nir(dt=...)``: export with the reader's ``dt``.
- Reset: NIR's LIF resets to ``v_reset`` at the spike, which is lowbit's ``reset="zero"`` (lowbit
  zeroes before the next step's decay, the same trajectory); both readers read that as written.
  Reset by subtraction is metadata only: snnTorch's importer always builds reset-to-zero neurons,
  so the reader swaps in ``Synaptic(reset_mechanism="subtract", reset_delay=True)`` for an ``SNN``
  (lowbit subtracts ``thr`` after the next decay, snnTorch's default order) or ``reset_delay=False``
  for an ``EventPropSNN`` (which subtracts at once). Norse's ``reset_subtract`` subtracts at once,
  before the decay: right for EventProp; an ``SNN`` needs ``v - z * thr / beta``.
- A :class:`~lowbit.snn.conv.ConvSNN` is ``Conv2d``/``Conv1d`` (``input_shape`` set, zero bias) ->
  LIF -> ``SumPool2d``/``AvgPool2d`` -> ... -> ``Flatten`` -> ``Linear`` -> readout.
  ``to_nir(pool="sum"|"avg")`` writes the other pooling node than the model's, the window size
  folded into the next weights (tests/test_nir_conv.py: snnTorch reads both -- ``SumPool2d``
  through nirtorch's default map --, Norse 1.1 only ``SumPool2d``). Neither reader maps ``Conv1d``
  nor a 1-d pooling (NIR has none): ``portable=True`` writes a Conv1d network as the Conv2d network
  over frames of height 1 (the reader feeds ``[batch, C, 1, L]``). NIR's ``Flatten`` counts no batch
  axis (``start_dim=0``, written so by default), but both readers build
  ``torch.nn.Flatten(start_dim, end_dim)`` from it as is: the portable graph writes ``start_dim=1``
  and is built without NIR's type check (read its file with ``nir.read(path, type_check=False)``).
- Reading NIR back (:func:`from_nir`, in :mod:`lowbit.snn.nir_import`): snnTorch's
  ``export_to_nir`` graphs and lowbit's own feed-forward ones become an ``SNN``.
- EventProp's sub-step spike timing (graded ``phi`` / ``1 - phi`` delivery) is not expressible: the
  readers deliver whole spikes at the step, so they match the hidden spikes of a feed-forward
  ``EventPropSNN`` and the readout those spikes drive, not its graded readout or recurrence.
  EventProp also caps a residue above threshold (one spike per step); the readers do not, so the
  two part where a membrane reaches twice the threshold in one step.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..fileio import save_with
from ..snn.base import SpikingNetwork
from ..snn.conv import POOLS, ConvSNN
from ..snn.eventprop import EventPropSNN
from ..snn.nir_import import from_nir  # reading NIR into an SNN lives with the SNN; here beside the writer

__all__ = ["to_nir", "export_nir", "from_nir", "NEVER"]

# The threshold of a portable readout: never reached. Not +inf, because the readers' reset terms
# multiply the threshold by a zero spike (0 * inf = NaN).
NEVER = 1e30


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32)


def _tau(decay: float, dt: float) -> float:
    return dt / (1.0 - decay)


def _lif_node(nir, n: int, beta: float, alpha: float | None, thr: float, dt: float,  # type: ignore[no-untyped-def]
              portable: bool = False):
    full = lambda v: np.full(n, v, dtype=np.float32)  # noqa: E731
    if portable and beta < 1.0 and alpha is None:
        alpha = 0.0  # a CubaLIF whose synapse forgets at once (tau_syn = dt, w_in = 1) is the plain LIF
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


def _readout_node(nir, n: int, beta: float, alpha: float | None, dt: float,  # type: ignore[no-untyped-def]
                  portable: bool = False):
    full = lambda v: np.full(n, v, dtype=np.float32)  # noqa: E731
    if portable and beta < 1.0:
        # neither snnTorch 1.0 nor Norse 1.1 maps LI/CubaLI: a CubaLIF that never fires is the same integrator
        return _lif_node(nir, n, beta, alpha, NEVER, dt, portable=True)
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


def _recurrent_subgraph(nir, lif, rec, n: int):  # type: ignore[no-untyped-def]
    """A recurrent layer as one NIR subgraph: input -> lif -> output, lif -> rec -> lif."""
    # snnTorch 1.0's importer rewrites a top-level LIF <-> Linear cycle into a subgraph whose input
    # feeds the recurrent weights instead of the neurons; handing it the subgraph avoids that rewrite.
    size = np.array([n])
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": size}), "lif": lif, "rec": rec,
               "output": nir.Output(output_type={"output": size})},
        edges=[("input", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")],
    )


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


def _dense_nodes(nir, model, w, linear, dyn, dt: float, portable: bool):  # type: ignore[no-untyped-def]
    """Nodes and edges of an SNN / EventPropSNN: input -> (Linear -> LIF [<-> rec]) x N -> Linear -> readout."""
    conns = model.connections()
    nodes: dict[str, object] = {"input": nir.Input(input_type={"input": np.array([model.sizes[0]])})}
    edges: list[tuple[str, str]] = []
    prev = "input"
    for k, (beta, alpha, thr, _) in enumerate(dyn["layers"]):  # type: ignore[arg-type]
        nodes[f"fc{k}"] = linear(f"fc{k}")
        nodes[f"lif{k}"] = _lif_node(nir, model.sizes[k + 1], beta, alpha, thr, dt, portable)
        edges += [(prev, f"fc{k}"), (f"fc{k}", f"lif{k}")]
        if f"rec{k}" in conns and portable:
            nodes[f"lif{k}"] = _recurrent_subgraph(nir, nodes[f"lif{k}"], linear(f"rec{k}"), model.sizes[k + 1])
        elif f"rec{k}" in conns:
            nodes[f"rec{k}"] = linear(f"rec{k}")
            edges += [(f"lif{k}", f"rec{k}"), (f"rec{k}", f"lif{k}")]
        prev = f"lif{k}"
    nodes["out"] = linear("out")
    _readout_nodes(nir, nodes, edges, prev, model.sizes[-1], dyn, dt, portable)
    return nodes, edges


def _readout_nodes(nir, nodes: dict, edges: list, prev: str, n_out: int, dyn, dt: float,  # type: ignore[no-untyped-def]
                   portable: bool) -> None:
    out_beta, out_alpha, out_thr = dyn["out"]
    if dyn["spiking_out"]:
        nodes["readout"] = _lif_node(nir, n_out, out_beta, out_alpha, out_thr, dt, portable)
    else:
        nodes["readout"] = _readout_node(nir, n_out, out_beta, out_alpha, dt, portable)
    nodes["output"] = nir.Output(output_type={"output": np.array([n_out])})
    edges += [(prev, "out"), ("out", "readout"), ("readout", "output")]


def _conv_nodes(nir, model: ConvSNN, w, wmeta, dyn, dt: float, portable: bool, pool: str):  # type: ignore[no-untyped-def]
    """Nodes and edges of a ConvSNN: input -> (Conv -> LIF -> pool) x N -> Flatten -> Linear -> readout.

    ``portable``: a Conv1d network is written as the Conv2d network over frames of height 1
    (neither snnTorch 1.0 nor Norse 1.1 maps ``Conv1d``); the reader feeds ``[batch, C, 1, L]``.
    """
    lift = portable and model.dims == 1  # Conv1d as Conv2d with a height of 1
    shape = (lambda s: (s[0], 1, *s[1:])) if lift else (lambda s: tuple(s))  # noqa: E731
    window = model.pool ** model.dims
    # a pooling node of the other kind than the model's: the window size moves into the next weights
    gain = {("sum", "avg"): float(window), ("avg", "sum"): 1.0 / window}.get((model.pool_kind, pool), 1.0)
    nodes: dict[str, object] = {"input": nir.Input(input_type={"input": np.array(shape(model.in_shape))})}
    edges: list[tuple[str, str]] = []
    prev, spatial, factor = "input", shape(model.in_shape)[1:], 1.0
    for k, (beta, alpha, thr, _) in enumerate(dyn["layers"]):
        kern = _np(w[f"fc{k}"]) * np.float32(factor)
        pad = model.padding
        if model.dims == 2 or lift:
            if lift:
                kern, pad = kern[:, :, None, :], (0, pad)
            conv = nir.Conv2d(input_shape=tuple(int(v) for v in spatial), weight=kern, stride=1, padding=pad, dilation=1,
                              groups=1, bias=np.zeros(kern.shape[0], np.float32), metadata=wmeta(f"fc{k}"))
        else:
            conv = nir.Conv1d(input_shape=int(spatial[0]), weight=kern, stride=1, padding=pad, dilation=1, groups=1,
                              bias=np.zeros(kern.shape[0], np.float32), metadata=wmeta(f"fc{k}"))
        conv.metadata["weight_factor"] = factor  # the written weights are the model's times this
        nodes[f"conv{k}"] = conv
        lshape = shape(model.layer_shapes[k])
        nodes[f"lif{k}"] = _lif_node(nir, lshape, beta, alpha, thr, dt, portable)
        edges += [(prev, f"conv{k}"), (f"conv{k}", f"lif{k}")]
        prev, spatial, factor = f"lif{k}", lshape[1:], 1.0
        if model.pool > 1:
            if model.dims == 1 and not lift:
                raise ValueError("NIR has no 1-d pooling node; export a pooled Conv1d network with portable=True "
                                 "(it is written as Conv2d over frames of height 1)")
            size = np.array([1, model.pool] if lift else [model.pool] * 2)
            node = nir.SumPool2d if pool == "sum" else nir.AvgPool2d
            nodes[f"pool{k}"] = node(kernel_size=size, stride=size, padding=np.zeros(2, dtype=int))
            edges.append((prev, f"pool{k}"))
            prev, spatial, factor = f"pool{k}", shape(model.pooled_shapes[k])[1:], gain
    flat_in = shape(model.pooled_shapes[-1])
    # start_dim 0 is NIR's (types carry no batch axis), but both readers build torch.nn.Flatten(start_dim,
    # end_dim) from it as is, which would flatten the batch too: portable graphs write the readers' 1
    nodes["flatten"] = nir.Flatten(input_type={"input": np.array(flat_in)}, start_dim=1 if portable else 0, end_dim=-1)
    edges.append((prev, "flatten"))
    nodes["out"] = nir.Linear(weight=_np(w["out"]) * np.float32(factor), metadata={**wmeta("out"), "weight_factor": factor})
    _readout_nodes(nir, nodes, edges, "flatten", model.sizes[-1], dyn, dt, portable)
    return nodes, edges


def to_nir(model: SpikingNetwork, *, dt: float | None = None, portable: bool = False,  # type: ignore[no-untyped-def]
           pool: str | None = None):
    """The NIR graph of ``model`` (an SNN, EventPropSNN or ConvSNN), with the quantized weights it runs with.

    ``dt`` is the step, in NIR's time unit, that one of the model's steps stands for (default: the
    model's own ``dt``); ``portable=True`` writes only nodes that snnTorch and Norse map (see the
    module docstring); ``pool`` (a ConvSNN's pooling node: ``"sum"`` or ``"avg"``, default its own)
    rewrites the pooling as the other kind, folding the window size into the next weights.
    """
    if dt is not None and not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number (NIR time per model step), got {dt!r}")
    if not isinstance(portable, bool):
        raise TypeError(f"portable must be True or False, got {type(portable).__name__}")
    if pool is not None and pool not in POOLS:
        raise ValueError(f"pool must be None (the model's own) or one of {POOLS}, got {pool!r}")
    try:
        import nir
    except ImportError:
        raise ImportError("NIR export needs the nir package: pip install 'lowbit[snn]'") from None
    if not isinstance(model, SpikingNetwork):
        raise TypeError(f"model must be a lowbit.snn.SNN, EventPropSNN or ConvSNN, got {type(model).__name__}")
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

    def wmeta(name: str) -> dict[str, object]:
        meta: dict[str, object] = {"quantized": int(name in bits)}
        if name in bits:
            meta.update(bits=bits[name], scale=scales[name])
        return meta

    def linear(name: str):  # type: ignore[no-untyped-def]
        return nir.Linear(weight=_np(w[name]), metadata=wmeta(name))

    dyn = _dynamics(model)
    dt = float(dyn["dt"]) if dt is None else float(dt)  # type: ignore[arg-type]
    if isinstance(model, ConvSNN):
        nodes, edges = _conv_nodes(nir, model, w, wmeta, dyn, dt, portable, pool or model.pool_kind)
    else:
        nodes, edges = _dense_nodes(nir, model, w, linear, dyn, dt, portable)
    meta: dict[str, object] = {
        "producer": "lowbit",
        "network": type(model).__name__,
        "dt": dt,
        "reset": dyn["reset"],
        "reset_timing": "the reset of a spike at step t acts at step t+1 (snnTorch order)",
        "spike_timing": dyn["spike_timing"],
        "readout": dyn["readout"],
        "weight_spec": wq.spec if wq is not None else "float32",
        "portable": int(portable),
    }
    for k, layer in enumerate(dyn["layers"]):  # type: ignore[arg-type]
        if layer[3] is not None:
            meta[f"state_levels{k}"] = _np(layer[3])
    # a portable ConvSNN's Flatten counts the batch axis (start_dim=1, as both readers apply it), which
    # NIR's type inference (no batch axis) rejects: that graph is built, and must be read, unchecked
    check = not (portable and isinstance(model, ConvSNN))
    if not check:
        meta["type_check"] = "off: Flatten start_dim=1 counts the batch axis, as snnTorch/Norse apply it; "\
                             "read with nir.read(path, type_check=False)"
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=check)


def export_nir(model: SpikingNetwork, path: str | os.PathLike[str], *, dt: float | None = None,
               portable: bool = False) -> Path:
    """Write ``model`` (an SNN or EventPropSNN) as a NIR (HDF5) file, atomically; returns the path."""
    import nir

    graph = to_nir(model, dt=dt, portable=portable)
    path = Path(path)
    save_with(path, lambda tmp: nir.write(str(tmp), graph))
    return path
