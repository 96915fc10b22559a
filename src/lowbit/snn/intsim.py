"""An integer-only simulator of a profiled SNN: the chip program as int64 arrays, run with NumPy integers.

:func:`compile_int` reads a network under :func:`lowbit.snn.profiles.apply_profile` into an
:class:`IntProgram` (weight mantissas and exponents, decay codes, integer threshold, widths);
:func:`simulate` runs it on 0/1 spike input with int64 arithmetic only (matmuls of integers,
shifts, clamps: no float in the time loop). Its spikes equal the fake-quantized network's,
every neuron at every step, because the profile's float64 forward computes the same integers
(``tests/test_snn_profiles.py`` checks it on Randman and spike-encoded digits).

The readout trace is integer as well; ``max`` / ``sum`` / ``last`` reduce it to integers
(``readout``), and ``mean`` / ``exp`` are the one float step (the trace times their weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .neurons import RLIF, readout_weights
from .profiles import ChipProfile, Profiled, chip_weights

__all__ = ["IntLayer", "IntProgram", "compile_int", "simulate"]


@dataclass
class IntLayer:
    """One population on the chip: weight mantissas and exponents, decay codes (None for the readout's current)."""

    w_ff: np.ndarray                 # int64 [n, n_pre] mantissas
    e_ff: int
    w_rec: np.ndarray | None = None  # int64 [n, n] mantissas
    e_rec: int = 0
    mem_code: int = 0
    syn_code: int | None = 0         # None: no current stage (the readout)


@dataclass
class IntProgram:
    """A profiled network as integers: hidden layers, readout, the profile and the readout's reduction."""

    profile: ChipProfile
    layers: list[IntLayer]
    out: IntLayer
    readout: str = "max"
    meta: dict[str, object] = field(default_factory=dict)


def compile_int(net: torch.nn.Module) -> IntProgram:
    """The integer program of a network under a chip profile (weights fitted as its forward pass fits them)."""
    prof = getattr(net, "profile", None)
    if not isinstance(prof, Profiled):
        raise ValueError("net must have a chip profile: lowbit.snn.profiles.apply_profile(net, 'loihi2' | 'xylo')")
    p = prof.profile
    codes = prof.codes(net)
    with torch.no_grad():
        w = chip_weights(net, p)

    def mant(name: str) -> tuple[np.ndarray, int]:
        v, e = w[name]
        return (v / float(1 << e)).round().to(torch.int64).numpy(), e

    layers = []
    for k, neuron in enumerate(net.hidden):  # type: ignore[arg-type]
        wf, ef = mant(f"fc{k}")
        wr, er = mant(f"rec{k}") if isinstance(neuron, RLIF) else (None, 0)
        layers.append(IntLayer(wf, ef, wr, er, codes["mem"][k], codes["syn"][k]))  # type: ignore[index]
    wo, eo = mant("out")
    out = IntLayer(wo, eo, mem_code=codes["out"], syn_code=None)  # type: ignore[arg-type]
    return IntProgram(p, layers, out, net.readout.readout, {"theta": p.theta})  # type: ignore[union-attr]


def _decay(p: ChipProfile, v: np.ndarray, code: int) -> np.ndarray:
    if p.decay == "frac12":
        prod = v * code  # keep = 4096 - d; sign-magnitude shift = truncation toward zero
        return np.sign(prod) * (np.abs(prod) >> 12)
    if code == 0:
        return np.zeros_like(v)
    dv = v >> code  # arithmetic shift (floor)
    dv = np.where((dv == 0) & (v > 0), 1, dv)  # XyloSim decays a small positive value by at least 1
    return v - dv


def simulate(prog: IntProgram, x: np.ndarray | torch.Tensor) -> dict[str, object]:
    """Run ``prog`` on 0/1 spikes ``x`` [batch, time, n_in]: spikes per layer (int64 [b, t, n]), readout trace and readout."""
    xs = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if xs.ndim != 3 or xs.shape[-1] != prog.layers[0].w_ff.shape[1]:
        raise ValueError(f"x must have shape [batch, time, {prog.layers[0].w_ff.shape[1]}], got {xs.shape}")
    if not np.isin(xs, (0, 1)).all():
        raise ValueError("x must hold 0/1 spikes")
    p = prog.profile
    lo, hi = p.state_range
    theta = p.theta
    h = xs.astype(np.int64)
    b, t, _ = h.shape
    spikes = []
    for L in prog.layers:
        n = L.w_ff.shape[0]
        wf = L.w_ff << L.e_ff
        wr = None if L.w_rec is None else L.w_rec << L.e_rec
        cur = h @ wf.T  # int64 [b, t, n]
        u = np.zeros((b, n), np.int64)
        v = np.zeros((b, n), np.int64)
        s = np.zeros((b, n), np.int64)
        out = np.zeros((b, t, n), np.int64)
        for i in range(t):
            it = cur[:, i] if wr is None else cur[:, i] + s @ wr.T
            u = np.clip(_decay(p, u, L.syn_code or 0) + it, lo, hi)
            v = np.clip(_decay(p, v, L.mem_code) + u, lo, hi)
            s = (v > theta if p.strict else v >= theta).astype(np.int64)
            v = v * (1 - s) if p.reset == "zero" else v - s * theta
            out[:, i] = s
        spikes.append(out)
        h = out
    cur = h @ (prog.out.w_ff << prog.out.e_ff).T
    v = np.zeros((b, cur.shape[2]), np.int64)
    trace = np.zeros_like(cur)
    for i in range(t):
        v = np.clip(_decay(p, v, prog.out.mem_code) + cur[:, i], lo, hi)
        trace[:, i] = v
    r = prog.readout
    if r == "max":
        readout: np.ndarray = trace.max(axis=1)
    elif r == "sum":
        readout = trace.sum(axis=1)
    elif r == "last":
        readout = trace[:, -1]
    else:  # mean / exp: the one float step
        wts = readout_weights(t, r, torch.float64).numpy()  # type: ignore[union-attr]
        readout = np.einsum("btn,t->bn", trace.astype(np.float64), wts)
    return {"spikes": spikes, "trace": trace, "readout": readout, "pred": readout.argmax(axis=1),
            "scale": 2.0 ** -p.readout_bits}
