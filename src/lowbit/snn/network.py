"""A feed-forward or recurrent spiking classifier: input -> LIF layer(s) -> leaky-integrator readout.

Connections are named ``fc0, fc1, ...`` (feed-forward into hidden layer ``k``),
``rec0, ...`` (recurrent, when ``recurrent=True``) and ``out``; populations are
``hidden0, ...`` and ``out``. :meth:`SNN.quantize_weights` attaches a
:class:`~lowbit.snn.quant.WeightQuant`; :meth:`SNN.set_state_quant` sets the
hidden neurons' state quantizer. Weights are quantized once per forward pass.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .neurons import LI, LIF, RLIF, StateQuant, linear_seq
from .base import SpikingNetwork

__all__ = ["SNN"]


class SNN(SpikingNetwork):
    """Spiking classifier with explicit, quantizable connections; input [batch, time, n_in] -> logits."""

    def __init__(
        self,
        n_in: int,
        n_hidden: int | Sequence[int],
        n_out: int,
        *,
        recurrent: bool = True,
        beta: float | None = None,
        tau_mem: float | None = None,
        dt: float = 1.0,
        alpha: float | None = None,
        tau_syn: float | None = None,
        threshold: float = 1.0,
        reset: str = "subtract",
        surrogate: str | Callable[[Tensor], Tensor] = "fast_sigmoid",
        readout: str = "max",
        out_beta: float | None = None,
        out_tau_mem: float | None = None,
        init_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(n_in, n_hidden, n_out)
        hidden = self.sizes[1:-1]
        if beta is None and tau_mem is None:
            beta = 0.9
        if out_beta is None and out_tau_mem is None:
            out_beta, out_tau_mem = (beta, tau_mem)
        g = torch.Generator().manual_seed(seed)
        self.recurrent = bool(recurrent)
        kw = dict(beta=beta, tau_mem=tau_mem, dt=dt, alpha=alpha, tau_syn=tau_syn, threshold=threshold,
                  reset=reset, surrogate=surrogate)
        self.fc = nn.ParameterList()
        self.hidden = nn.ModuleList()
        for k, h in enumerate(hidden):
            fan_in = self.sizes[k]
            self.fc.append(nn.Parameter(torch.randn(h, fan_in, generator=g) * (init_scale / math.sqrt(fan_in))))
            if recurrent:
                self.hidden.append(RLIF(h, init_scale=init_scale, generator=g, **kw))
            else:
                self.hidden.append(LIF(h, **kw))
        self.w_out = nn.Parameter(torch.randn(n_out, hidden[-1], generator=g) * (1.0 / math.sqrt(hidden[-1])))
        self.readout = LI(n_out, beta=out_beta, tau_mem=out_tau_mem, dt=dt, readout=readout)

    # ------------------------------------------------------------------ structure

    def recurrent_param(self, k: int) -> str | None:
        """Hidden layer ``k``'s recurrent weights live in its RLIF neurons (none for plain LIF)."""
        return f"hidden.{k}.weight_rec" if isinstance(self.hidden[k], RLIF) else None

    # ------------------------------------------------------------------ quantization

    def set_state_quant(self, state_quant: StateQuant | Sequence[StateQuant | None] | None) -> "SNN":
        """Set the membrane (and synaptic) state quantizer of every hidden layer (one, or one per layer)."""
        qs = list(state_quant) if isinstance(state_quant, (list, tuple)) else [state_quant] * len(self.hidden)
        if len(qs) != len(self.hidden):
            raise ValueError(f"state_quant must be one callable or {len(self.hidden)} of them, got {len(qs)}")
        for neuron, q in zip(self.hidden, qs):
            if q is not None and not callable(q):
                raise TypeError(f"state_quant must be callable, got {type(q).__name__}")
            neuron.state_quant = q
        return self

    # ------------------------------------------------------------------ forward

    def run(self, x: Tensor, record: bool = False) -> dict[str, object]:
        """Forward pass returning logits and, if ``record``, each layer's spikes and membrane traces."""
        if getattr(self, "profile", None) is not None:  # a chip's integer arithmetic (lowbit.snn.profiles)
            return self.profile.run(self, x, record)
        self.check_input(x)
        w = self.effective_weights()  # once per forward pass, not per time step
        h = x
        spikes, mems = [], []
        for k, neuron in enumerate(self.hidden):
            cur = linear_seq(h, w[f"fc{k}"])
            if isinstance(neuron, RLIF):
                res = neuron(cur, record=record, weight_rec=w[f"rec{k}"])
            else:
                res = neuron(cur, record=record)
            h = res[0]
            spikes.append(h)
            if record:
                mems.append(res[2])
        out_trace = self.readout.trace(linear_seq(h, w["out"]))
        logits = self.readout.reduce(out_trace)
        result: dict[str, object] = {"logits": logits}
        if record:
            result.update(spikes=spikes, mem=mems, out=out_trace)
        return result

    def forward(self, x: Tensor) -> Tensor:
        """Logits [batch, n_out] for spike input ``x`` [batch, time, n_in]."""
        return self.run(x)["logits"]  # type: ignore[return-value]
