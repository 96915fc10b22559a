"""Quantized recurrent layers: ``QuantLSTM`` and ``QuantGRU``, the recurrence written out.

Every weight matrix of every layer and direction is a :class:`QuantLinear`:
``ih_l{k}[_reverse]`` (``weight_ih``, ``bias_ih``) and ``hh_l{k}[_reverse]``
(``weight_hh``, ``bias_hh``). Rows of ``weight_ih`` / ``weight_hh`` are one gate's
output channel each, so the ``channel`` granularity gives one scale per gate and per
channel; biases stay float. The input quantizer of ``ih`` quantizes a layer's input;
the hidden state is float unless a state quantizer is given (it becomes ``hh``'s
input quantizer, see :meth:`QuantLSTM.from_float`).

Why not cuDNN / ``torch._VF.lstm`` with the fake-quantized flat weights: it is faster,
but on the CPU it takes another kernel under ``no_grad`` (outputs differ by ~3e-8 from
the same call with autograd on), and lowbit promises that a model is one network with
and without ``no_grad`` and after ``convert``. The explicit loop is that: the input
projection runs once over the whole sequence, each weight is quantized once per
forward call, and the per-step work is one matmul and the gate arithmetic. Outputs
equal ``nn.LSTM`` / ``nn.GRU`` within 1e-6 in float (``benchmarks/bench_zoo_accuracy.py``
notes the speed).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..quantizer import Quantizer
from .act import ActQuant
from .attention import refuse_trace
from .layers import QuantLinear

__all__ = ["QuantLSTM", "QuantGRU", "rnn_handler"]

WeightQuantFactory = Callable[[Tensor], "Quantizer | None"]
ActQuantFactory = Callable[[], "ActQuant | None"]


def _linear(w: Tensor, b: Tensor | None, wq: Quantizer | None, aq: ActQuant | None) -> QuantLinear:
    lin = QuantLinear(w.shape[1], w.shape[0], b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    lin._init_quant(wq, aq)
    return lin


class _QuantRNN(nn.Module):
    gates = 0  # rows of weight_ih per hidden unit: 4 (LSTM), 3 (GRU)

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, batch_first: bool = False,
        dropout: float = 0.0, bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if min(input_size, hidden_size, num_layers) < 1:
            raise ValueError(f"input_size, hidden_size and num_layers must be >= 1, got {input_size}, {hidden_size}, {num_layers}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.batch_first, self.dropout, self.bidirectional = bool(batch_first), float(dropout), bool(bidirectional)

    @property
    def directions(self) -> int:
        """1, or 2 when bidirectional."""
        return 2 if self.bidirectional else 1

    def _names(self) -> list[str]:
        return [f"l{k}{'_reverse' if d else ''}" for k in range(self.num_layers) for d in range(self.directions)]

    @classmethod
    def from_float(
        cls, mod: nn.RNNBase, weight_quant: WeightQuantFactory | None = None, input_quant: ActQuantFactory | None = None,
        state_quant: ActQuantFactory | None = None,
    ) -> Any:
        """The same recurrence as ``mod``; ``weight_quant(w)`` per weight matrix, ``input_quant()`` per layer input,
        ``state_quant()`` per hidden state (None: the state stays float)."""
        want = nn.LSTM if cls is QuantLSTM else nn.GRU
        if not isinstance(mod, want):
            raise TypeError(f"mod must be an nn.{want.__name__}, got {type(mod).__name__}")
        if getattr(mod, "proj_size", 0):
            raise ValueError(f"proj_size={mod.proj_size} (projected LSTM) is not supported; use proj_size=0")
        new = cls(mod.input_size, mod.hidden_size, mod.num_layers, batch_first=mod.batch_first, dropout=mod.dropout,
                  bidirectional=mod.bidirectional)
        for name in new._names():
            sfx = name[1:]  # 'l0_reverse' -> torch's '_l0_reverse' suffix
            for kind in ("ih", "hh"):
                w = getattr(mod, f"weight_{kind}_l{sfx}").detach()
                b = getattr(mod, f"bias_{kind}_l{sfx}").detach() if mod.bias else None
                aq = input_quant if kind == "ih" else state_quant
                setattr(new, f"{kind}_{name}", _linear(w, b, weight_quant(w) if weight_quant else None, aq() if aq else None))
        new.train(mod.training)
        return new

    def _cell(self, xi: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _run(self, x: Tensor, state0: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x: [T, B, F]; state0: tensors [layers*directions, B, H]."""
        finals: list[tuple[Tensor, ...]] = []
        seq = x.shape[0]
        for k in range(self.num_layers):
            outs = []
            for d in range(self.directions):
                idx = k * self.directions + d
                name = f"l{k}{'_reverse' if d else ''}"
                ih: QuantLinear = getattr(self, f"ih_{name}")
                hh: QuantLinear = getattr(self, f"hh_{name}")
                xi = ih(x)  # the input projection of every step at once
                w_hh = hh.quantized_weight()  # quantized once per forward call, not per step
                state = tuple(s[idx] for s in state0)
                ys: list[Tensor] = [x.new_empty(0)] * seq
                for t in (range(seq - 1, -1, -1) if d else range(seq)):
                    gh = F.linear(hh._quant_input(state[0]), w_hh, hh.bias)
                    state = self._cell(xi[t], gh, state)
                    ys[t] = state[0]
                outs.append(torch.stack(ys) if seq else x.new_zeros(0, x.shape[1], self.hidden_size))
                finals.append(state)
            x = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            if self.dropout and self.training and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, tuple(torch.stack([f[i] for f in finals]) for i in range(len(state0)))

    def _forward(self, x: Tensor, hx: tuple[Tensor, ...] | None, n_states: int) -> tuple[Tensor, tuple[Tensor, ...]]:
        refuse_trace(self, x)
        if isinstance(x, PackedSequence):
            raise TypeError(f"{type(self).__name__} takes padded tensors, not a PackedSequence (pad it with pad_packed_sequence)")
        if x.dim() not in (2, 3):
            raise ValueError(f"input must be 2-D (unbatched) or 3-D, got shape {tuple(x.shape)}")
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(1)
            hx = tuple(h.unsqueeze(1) for h in hx) if hx is not None else None
        elif self.batch_first:
            # contiguous: torch's linear takes another kernel for a strided 3-D input depending on autograd
            x = x.transpose(0, 1).contiguous()
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects input_size={self.input_size}")
        shape = (self.num_layers * self.directions, x.shape[1], self.hidden_size)
        if hx is None:
            hx = tuple(x.new_zeros(shape) for _ in range(n_states))
        elif any(tuple(h.shape) != shape for h in hx):
            raise ValueError(f"initial states must have shape {shape}, got {[tuple(h.shape) for h in hx]}")
        out, states = self._run(x, hx)
        if not batched:
            return out.squeeze(1), tuple(s.squeeze(1) for s in states)
        return (out.transpose(0, 1) if self.batch_first else out), states

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, batch_first={self.batch_first}, "
                f"dropout={self.dropout}, bidirectional={self.bidirectional}")


class QuantLSTM(_QuantRNN):
    """``nn.LSTM`` (gates i, f, g, o) with quantized weight matrices; returns ``output, (h_n, c_n)``."""

    gates = 4

    def _cell(self, xi: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        i, f, g, o = (xi + gh).chunk(4, 1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """As ``nn.LSTM.forward`` (padded input, optional ``(h_0, c_0)``)."""
        out, (h, c) = self._forward(input, hx, 2)
        return out, (h, c)


class QuantGRU(_QuantRNN):
    """``nn.GRU`` (gates r, z, n) with quantized weight matrices; returns ``output, h_n``."""

    gates = 3

    def _cell(self, xi: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        ir, iz, in_ = xi.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (n + z * (state[0] - n),)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """As ``nn.GRU.forward`` (padded input, optional ``h_0``)."""
        out, (h,) = self._forward(input, (hx,) if hx is not None else None, 1)
        return out, h


def rnn_handler(mod: nn.Module, wspec: str | None, aspec: str | None) -> nn.Module:
    """Handler: ``nn.LSTM`` / ``nn.GRU`` -> :class:`QuantLSTM` / :class:`QuantGRU` (weights per gate and channel)."""
    from .handlers import act_quantizer, is_pact_spec, weight_quantizer  # the registry imports this module

    aspec = None if is_pact_spec(aspec) else aspec
    if wspec is None and aspec is None:
        return mod
    cls = QuantLSTM if isinstance(mod, nn.LSTM) else QuantGRU
    if type(mod) not in (nn.LSTM, nn.GRU):
        raise ValueError(f"{type(mod).__name__} subclasses nn.{cls.__name__[5:]} with its own forward; lowbit cannot quantize it")
    return cls.from_float(
        mod,  # type: ignore[arg-type]
        (lambda w: weight_quantizer(wspec, w)) if wspec else None,
        (lambda: act_quantizer(aspec)) if aspec else None,
    )
