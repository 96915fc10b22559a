"""A convolutional spiking classifier: input -> (Conv + LIF [+ pooling]) x N -> flatten -> linear -> LI readout.

:class:`ConvSNN` is a :class:`~lowbit.snn.base.SpikingNetwork` like :class:`~lowbit.snn.SNN`:
its connections are ``fc<k>`` (the kernel into conv layer ``k``) and ``out`` (the linear readout
weights), its populations ``hidden<k>`` and ``out``, so ``quantize_weights`` / ``set_state_quant``
/ :func:`~lowbit.snn.train` (BPTT) / ``record_membrane`` / ``lowbit.save`` and ``load`` work on it
unchanged. ``in_shape`` is ``(channels, length)`` for ``Conv1d`` layers or ``(channels, height,
width)`` for ``Conv2d``; the input is a spike raster ``[batch, time, prod(in_shape)]`` (the
flattened frame, as :func:`lowbit.data.spiking.spiking_digits` gives it) or ``[batch, time,
*in_shape]``.

A convolution has no state, so it runs on every time step at once (one ``conv`` call per layer
per forward pass); the LIF neurons are the time loop. Pooling acts on the spikes: ``"sum"``
(NIR ``SumPool2d``: the next layer sees the spike count of each window) or ``"avg"`` (NIR
``AvgPool2d``: the count divided by the window size). Max pooling of binary spikes is a logical
OR, which NIR cannot express, so it is not offered. Convolutions have no bias (as ``SNN``'s
linear connections have none) and ``"same"`` zero padding (``kernel // 2``).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import SpikingNetwork
from .network import SNN
from .neurons import LI, LIF, linear_seq

__all__ = ["ConvSNN", "POOLS"]

POOLS = ("sum", "avg")


def _pos_int(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


class ConvSNN(SpikingNetwork):
    """Convolutional spiking classifier (Conv1d or Conv2d + LIF, pooling, linear + LI readout); input [batch, time, features]."""

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: int | Sequence[int] = (8, 16),
        kernel: int = 3,
        pool: int = 2,
        n_out: int = 10,
        *,
        pool_kind: str = "sum",
        beta: float | None = None,
        tau_mem: float | None = None,
        dt: float = 1.0,
        alpha: float | None = None,
        tau_syn: float | None = None,
        threshold: float = 1.0,
        reset: str = "subtract",
        surrogate: str | Callable[[Tensor], Tensor] = "fast_sigmoid",
        readout: str = "mean",
        out_beta: float | None = None,
        out_tau_mem: float | None = None,
        init_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, Sequence) or len(in_shape) not in (2, 3) \
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in in_shape):
            raise ValueError(f"in_shape must be (channels, length) or (channels, height, width) of positive ints, got {in_shape!r}")
        chans = [channels] if isinstance(channels, int) and not isinstance(channels, bool) else list(channels)
        if not chans or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in chans):
            raise ValueError(f"channels must be a positive int or a non-empty list of them, got {channels!r}")
        kernel, pool = _pos_int(kernel, "kernel"), _pos_int(pool, "pool")
        if pool_kind not in POOLS:
            raise ValueError(f"pool_kind must be one of {POOLS}, got {pool_kind!r}")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.dims = len(self.in_shape) - 1  # 1: Conv1d, 2: Conv2d
        self.kernel, self.pool, self.pool_kind, self.padding = kernel, pool, pool_kind, kernel // 2
        # every layer's neuron shape (channels, *spatial) and the shape after its pooling
        self.layer_shapes: list[tuple[int, ...]] = []
        self.pooled_shapes: list[tuple[int, ...]] = []
        spatial = list(self.in_shape[1:])
        for c in chans:
            spatial = [s + 2 * self.padding - kernel + 1 for s in spatial]
            if min(spatial) < 1:
                raise ValueError(f"kernel {kernel} leaves no output for in_shape {self.in_shape} at layer {len(self.layer_shapes)}")
            self.layer_shapes.append((c, *spatial))
            if pool > 1:
                spatial = [s // pool for s in spatial]
                if min(spatial) < 1:
                    raise ValueError(f"pool {pool} leaves no output after layer {len(self.layer_shapes) - 1} "
                                     f"(shape {self.layer_shapes[-1]}); use fewer layers or a smaller pool")
            self.pooled_shapes.append((c, *spatial))
        n_flat = math.prod(self.pooled_shapes[-1])
        super().__init__(math.prod(self.in_shape), [math.prod(s) for s in self.layer_shapes], n_out)
        if beta is None and tau_mem is None:
            beta = 0.9
        if out_beta is None and out_tau_mem is None:
            out_beta, out_tau_mem = (beta, tau_mem)
        g = torch.Generator().manual_seed(seed)
        kw = dict(beta=beta, tau_mem=tau_mem, dt=dt, alpha=alpha, tau_syn=tau_syn, threshold=threshold,
                  reset=reset, surrogate=surrogate)
        self.fc = nn.ParameterList()
        self.hidden = nn.ModuleList()
        c_in = self.in_shape[0]
        for shape in self.layer_shapes:
            fan_in = c_in * kernel ** self.dims
            w = torch.randn(shape[0], c_in, *([kernel] * self.dims), generator=g) * (init_scale / math.sqrt(fan_in))
            self.fc.append(nn.Parameter(w))
            self.hidden.append(LIF(math.prod(shape), **kw))  # type: ignore[arg-type]
            c_in = shape[0]
        self.w_out = nn.Parameter(torch.randn(n_out, n_flat, generator=g) * (1.0 / math.sqrt(n_flat)))
        self.readout = LI(n_out, beta=out_beta, tau_mem=out_tau_mem, dt=dt, readout=readout)

    def recurrent_param(self, k: int) -> str | None:
        """Conv layers have no recurrence."""
        return None

    set_state_quant = SNN.set_state_quant  # the same per-layer state quantizers as SNN

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, w, padding=self.padding)

    def pool_frames(self, s: Tensor) -> Tensor:
        """Pool spike frames [n, c, *spatial] over ``pool`` x ``pool`` windows (sum or mean of the spikes)."""
        if self.pool == 1:
            return s
        avg = F.avg_pool1d if self.dims == 1 else F.avg_pool2d
        out = avg(s, self.pool)
        return out * self.pool ** self.dims if self.pool_kind == "sum" else out

    def run(self, x: Tensor, record: bool = False) -> dict[str, object]:
        """Forward pass returning logits and, if ``record``, each layer's spikes and membrane traces [batch, time, neurons]."""
        if isinstance(x, Tensor) and x.dim() == 2 + len(self.in_shape) and tuple(x.shape[2:]) == self.in_shape:
            x = x.flatten(2)
        self.check_input(x)
        b, t = x.shape[:2]
        w = self.effective_weights()  # once per forward pass, not per time step
        frames = x.reshape(b * t, *self.in_shape)
        spikes, mems = [], []
        for k, neuron in enumerate(self.hidden):
            cur = self._conv(frames, w[f"fc{k}"]).reshape(b, t, -1)
            res = neuron(cur, record=record)
            spikes.append(res[0])
            if record:
                mems.append(res[2])
            frames = self.pool_frames(res[0].reshape(b * t, *self.layer_shapes[k]))
        out_trace = self.readout.trace(linear_seq(frames.reshape(b, t, -1), w["out"]))
        result: dict[str, object] = {"logits": self.readout.reduce(out_trace)}
        if record:
            result.update(spikes=spikes, mem=mems, out=out_trace)
        return result

    def forward(self, x: Tensor) -> Tensor:
        """Logits [batch, n_out] for spike input ``x`` [batch, time, prod(in_shape)] or [batch, time, *in_shape]."""
        return self.run(x)["logits"]  # type: ignore[return-value]
