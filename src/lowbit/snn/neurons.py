"""Spiking neurons with explicit state, batch-first ``[batch, time, features]``.

One step of :class:`LIF` (snnTorch's order, so that a state quantizer sees the
value the threshold test uses):

1. ``syn = alpha * syn + I``            (only with an exponential-current synapse)
2. ``mem = beta * mem + syn - r * thr``  (reset by subtraction; ``r`` = previous spike, detached)
   or ``mem = beta * (1 - r) * mem + syn`` (reset to zero)
3. ``mem = state_quant(mem)``; ``syn = syn_quant(syn)`` (default: the same quantizer)
4. ``spk = spike(mem - thr)``           (0/1, surrogate gradient)

The leak is ``beta`` directly, or ``exp(-dt / tau_mem)``; likewise ``alpha`` or
``exp(-dt / tau_syn)``. :class:`RLIF` adds recurrent input ``spk_prev @ W_rec^T``;
:class:`LI` is the non-spiking leaky-integrator readout (mean, max, sum or last of
its potential over time, as mlGeNN's ``AvgVar``/``MaxVar``/``SumVar``).

The time loop is the only Python loop; everything inside it is vectorised over
batch and neurons. A weight passed to ``forward`` overrides the module's own (the
network passes quantized weights computed once per forward pass).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .surrogate import surrogate as _surrogate

__all__ = ["LIF", "RLIF", "LI", "LIFState", "StateQuant", "decay", "READOUTS", "RESETS", "readout_weights"]

StateQuant = Callable[[Tensor], Tensor]
READOUTS = ("mean", "max", "sum", "last", "exp")
RESETS = ("subtract", "zero")


def decay(value: float | None, tau: float | None, dt: float, name: str, tau_name: str) -> float:
    """A per-step decay factor in [0, 1]: ``value`` itself, or ``exp(-dt / tau)``."""
    if (value is None) == (tau is None):
        raise ValueError(f"give exactly one of {name} and {tau_name}, got {name}={value!r}, {tau_name}={tau!r}")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    if tau is not None:
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"{tau_name} must be a positive number, got {tau!r}")
        return math.exp(-dt / tau)
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _membrane_decay(beta: float | None, tau_mem: float | None, dt: float) -> float:
    # LIF and LI: neither given means snnTorch's default, beta = 0.9
    return decay(0.9 if beta is None and tau_mem is None else beta, tau_mem, dt, "beta", "tau_mem")


def _check_seq(x: Tensor, n: int | None, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [batch, time, features], got {tuple(x.shape)}")
    if n is not None and x.shape[-1] != n:
        raise ValueError(f"{name} has {x.shape[-1]} features, expected {n}")


class _Integrate(torch.autograd.Function):
    """``mem' = beta mem + I - r thr`` (or ``beta (1 - r) mem + I``), then nearest level: one autograd node."""

    @staticmethod
    def forward(ctx, mem: Tensor, cur: Tensor, r: Tensor, beta: float, thr: float, subtract: bool,  # type: ignore[override]
                rounder: Callable[[Tensor], Tensor] | None) -> Tensor:
        if subtract:
            out = torch.add(cur, mem, alpha=beta).sub_(r, alpha=thr)
            ctx.save_for_backward()
        else:
            keep = (1.0 - r).mul_(beta)
            out = torch.addcmul(cur, keep, mem)
            ctx.save_for_backward(keep)
        ctx.beta, ctx.subtract = beta, subtract
        if rounder is not None:
            out = rounder(out)  # straight-through in backward
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        g_mem = None
        if ctx.needs_input_grad[0]:
            g_mem = g * ctx.beta if ctx.subtract else g * ctx.saved_tensors[0]
        return g_mem, g, None, None, None, None, None


class LIFState(NamedTuple):
    """Explicit neuron state: membrane potential, synaptic current (or None) and last spikes."""

    mem: Tensor
    syn: Tensor | None
    spk: Tensor


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons, optionally with an exponential-current synapse."""

    def __init__(
        self,
        size: int | None = None,
        *,
        beta: float | None = None,
        tau_mem: float | None = None,
        dt: float = 1.0,
        threshold: float = 1.0,
        reset: str = "subtract",
        alpha: float | None = None,
        tau_syn: float | None = None,
        surrogate: str | Callable[[Tensor], Tensor] = "fast_sigmoid",
        state_quant: StateQuant | None = None,
        syn_quant: StateQuant | None = None,
    ) -> None:
        super().__init__()
        self.beta = _membrane_decay(beta, tau_mem, dt)
        self.alpha = None if alpha is None and tau_syn is None else decay(alpha, tau_syn, dt, "alpha", "tau_syn")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        if state_quant is not None and not callable(state_quant):
            raise TypeError(f"state_quant must be a callable Tensor -> Tensor, got {type(state_quant).__name__}")
        if syn_quant is not None and not callable(syn_quant):
            raise TypeError(f"syn_quant must be a callable Tensor -> Tensor, got {type(syn_quant).__name__}")
        self.size = size
        self.dt = float(dt)
        self.threshold = float(threshold)
        self.reset = reset
        self.spike = _surrogate(surrogate)
        self.state_quant = state_quant
        self.syn_quant = syn_quant

    @property
    def synaptic(self) -> bool:
        """True when the neuron has an exponential-current synapse."""
        return self.alpha is not None

    def extra_repr(self) -> str:
        s = f"size={self.size}, beta={self.beta:.4g}, threshold={self.threshold:g}, reset={self.reset!r}"
        if self.alpha is not None:
            s += f", alpha={self.alpha:.4g}"
        if self.state_quant is not None:
            s += ", state_quant=on"
        return s

    def init_state(self, batch: int, n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> LIFState:
        """All-zero state for ``batch`` samples of ``n`` neurons."""
        z = torch.zeros(batch, n, device=device, dtype=dtype)
        return LIFState(z, z if self.synaptic else None, z)

    def _quant_syn(self, syn: Tensor) -> Tensor:
        q = self.syn_quant if self.syn_quant is not None else self.state_quant
        return q(syn) if q is not None else syn

    def step(self, current: Tensor, state: LIFState) -> tuple[Tensor, LIFState]:
        """Advance one time step with input ``current`` [batch, n]; return (spikes, new state)."""
        mem, syn, spk = state
        if self.alpha is not None:
            syn = self._quant_syn(self.alpha * syn + current)
            current = syn
        r = spk.detach()  # the reset is not differentiated (snnTorch's default)
        q = self.state_quant
        get = getattr(q, "rounder", None)
        rounder = get() if get is not None else None
        # integrate, reset (and round, for a StateQuantizer) in one autograd node
        mem = _Integrate.apply(mem, current, r, self.beta, self.threshold, self.reset == "subtract", rounder)
        if q is not None and rounder is None:
            mem = q(mem)
        spk = self.spike(mem - self.threshold)
        return spk, LIFState(mem, syn, spk)

    def forward(
        self, x: Tensor, state: LIFState | None = None, *, record: bool = False
    ) -> tuple[Tensor, LIFState] | tuple[Tensor, LIFState, Tensor]:
        """Run input currents ``x`` [batch, time, n]: (spikes [batch, time, n], final state[, mem trace])."""
        _check_seq(x, self.size)
        b, t, n = x.shape
        if state is None:
            state = self.init_state(b, n, x.device, x.dtype)
        spikes, mems = [], []
        # unbind once: indexing x[:, i] would make every step's backward fill a full-size zero tensor
        for xt in x.unbind(1):
            spk, state = self.step(xt, state)
            spikes.append(spk)
            if record:
                mems.append(state.mem)
        out = torch.stack(spikes, dim=1)
        if record:
            return out, state, torch.stack(mems, dim=1)
        return out, state


class RLIF(LIF):
    """LIF neurons with all-to-all recurrent weights ``weight_rec`` [n, n] (post x pre)."""

    def __init__(self, size: int, *, init_scale: float = 1.0, generator: torch.Generator | None = None, **kwargs: object) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int for a recurrent layer, got {size!r}")
        super().__init__(size, **kwargs)  # type: ignore[arg-type]
        w = torch.randn(size, size, generator=generator) * (init_scale / math.sqrt(size))
        self.weight_rec = nn.Parameter(w)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        state: LIFState | None = None,
        *,
        record: bool = False,
        weight_rec: Tensor | None = None,
    ) -> tuple[Tensor, LIFState] | tuple[Tensor, LIFState, Tensor]:
        """Like :meth:`LIF.forward`, adding ``spk[t-1] @ W_rec^T`` (``weight_rec`` overrides the parameter)."""
        _check_seq(x, self.size)
        w = self.weight_rec if weight_rec is None else weight_rec
        if w.shape != (self.size, self.size):
            raise ValueError(f"weight_rec must have shape {(self.size, self.size)}, got {tuple(w.shape)}")
        b, t, n = x.shape
        if state is None:
            state = self.init_state(b, n, x.device, x.dtype)
        wt = w.t()
        spikes, mems = [], []
        for xt in x.unbind(1):
            spk, state = self.step(torch.addmm(xt, state.spk, wt), state)
            spikes.append(spk)
            if record:
                mems.append(state.mem)
        out = torch.stack(spikes, dim=1)
        if record:
            return out, state, torch.stack(mems, dim=1)
        return out, state


def readout_weights(t: int, readout: str, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor | None:
    """Per-step weights of a linear readout over ``t`` steps (None for ``max``, which is not linear).

    ``exp`` weighs step ``k`` by ``e^{-k/t} / t``: mlGeNN's ``AvgVarExpWeight`` "loss shaping"
    (Nowotny et al.), which rewards the right answer early in the trial.
    """
    if readout == "mean":
        return torch.full((t,), 1.0 / t, dtype=dtype, device=device)
    if readout == "sum":
        return torch.ones(t, dtype=dtype, device=device)
    if readout == "exp":
        return torch.exp(-torch.arange(t, dtype=dtype, device=device) / t) / t
    if readout == "last":
        w = torch.zeros(t, dtype=dtype, device=device)
        w[-1] = 1.0
        return w
    if readout == "max":
        return None
    raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")


class LI(nn.Module):
    """Non-spiking leaky integrator ``v = beta * v + I``, read out over time (mean / max / sum / last / exp)."""

    def __init__(
        self,
        size: int | None = None,
        *,
        beta: float | None = None,
        tau_mem: float | None = None,
        dt: float = 1.0,
        readout: str = "mean",
    ) -> None:
        super().__init__()
        self.beta = _membrane_decay(beta, tau_mem, dt)
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.size = size
        self.dt = float(dt)
        self.readout = readout

    def extra_repr(self) -> str:
        return f"size={self.size}, beta={self.beta:.4g}, readout={self.readout!r}"

    def trace(self, x: Tensor) -> Tensor:
        """Potential over time [batch, time, n] for input currents ``x`` [batch, time, n]."""
        _check_seq(x, self.size)
        v = torch.zeros_like(x[:, 0])
        vs = []
        for xt in x.unbind(1):
            v = torch.add(xt, v, alpha=self.beta)
            vs.append(v)
        return torch.stack(vs, dim=1)

    def reduce(self, v: Tensor) -> Tensor:
        """Read a potential trace [batch, time, n] out to [batch, n]."""
        if self.readout == "mean":
            return v.mean(dim=1)
        if self.readout == "max":
            return v.amax(dim=1)
        if self.readout == "sum":
            return v.sum(dim=1)
        if self.readout == "exp":
            w = readout_weights(v.shape[1], "exp", v.dtype, v.device)
            return torch.einsum("btn,t->bn", v, w)  # type: ignore[arg-type]
        return v[:, -1]

    def forward(self, x: Tensor) -> Tensor:
        """Readout [batch, n] of input currents ``x`` [batch, time, n]."""
        return self.reduce(self.trace(x))


def linear_seq(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ W^T`` for a whole sequence [batch, time, in] at once (one matmul, outside the time loop)."""
    return F.linear(x, weight)
