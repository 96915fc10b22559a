"""What every spiking network here shares: its size checks, its named connections and populations, weight quantization.

:class:`SpikingNetwork` is the base of :class:`~lowbit.snn.SNN` (BPTT with surrogate
gradients) and :class:`~lowbit.snn.EventPropSNN` (exact gradients by EventProp). A network
is ``sizes = [n_in, *hidden, n_out]``; its connections are named ``fc<k>`` (into hidden
layer ``k``), ``rec<k>`` (that layer's recurrence, when it has one) and ``out``, in that
order, and its populations ``hidden<k>`` and ``out``. A subclass says only where its
recurrent weights live (:meth:`SpikingNetwork.recurrent_param`); the tables, the input
check and the weight quantization (:class:`~lowbit.snn.quant.QuantizedConnections`) are
here, once. The verbs (``lowbit.quantize`` / ``prepare_qat`` / ``convert`` / ``save`` /
``load``) take every subclass (:mod:`lowbit.snn.verbs`).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .quant import QuantizedConnections, WeightQuant

__all__ = ["SpikingNetwork", "layer_sizes"]


def _positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def layer_sizes(n_in: int, n_hidden: int | Sequence[int], n_out: int) -> list[int]:
    """``[n_in, *hidden, n_out]`` after checking that every size is a positive int."""
    for name, v in (("n_in", n_in), ("n_out", n_out)):
        if not _positive_int(v):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(n_hidden, (int, bool)):
        hidden = [n_hidden]
    elif isinstance(n_hidden, Sequence) and not isinstance(n_hidden, str):
        hidden = list(n_hidden)
    else:
        hidden = []
    if not hidden or not all(_positive_int(h) for h in hidden):
        raise ValueError(f"n_hidden must be a positive int or a non-empty list of them, got {n_hidden!r}")
    return [n_in, *hidden, n_out]  # type: ignore[list-item]


class SpikingNetwork(QuantizedConnections, nn.Module):
    """A layered spiking network with named connections (fc<k>, rec<k>, out) whose weights can be quantized."""

    def __init__(self, n_in: int, n_hidden: int | Sequence[int], n_out: int) -> None:
        super().__init__()
        self.sizes = layer_sizes(n_in, n_hidden, n_out)
        self.weight_quant: WeightQuant | None = None

    @property
    def n_layers(self) -> int:
        """Number of hidden layers."""
        return len(self.sizes) - 2

    def recurrent_param(self, k: int) -> str | None:
        """Name (in ``named_parameters()``) of hidden layer ``k``'s recurrent weights, or None when it has none."""
        raise NotImplementedError

    def connection_params(self) -> dict[str, str]:
        """Connection name -> parameter name in ``named_parameters()``, in the order fc0, rec0, fc1, ..., out."""
        out: dict[str, str] = {}
        for k in range(self.n_layers):
            out[f"fc{k}"] = f"fc.{k}"
            rec = self.recurrent_param(k)
            if rec is not None:
                out[f"rec{k}"] = rec
        out["out"] = "w_out"
        return out

    def connections(self) -> dict[str, Tensor]:
        """Every weight matrix by connection name (post x pre): fc<k>, rec<k>, out."""
        return {c: self.get_parameter(p) for c, p in self.connection_params().items()}

    def check_input(self, x: object) -> Tensor:
        """``x`` itself when it is a spike tensor [batch, time >= 1, n_in]; else a ValueError naming the shape."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.sizes[0] or x.shape[1] < 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [batch, time, {self.sizes[0]}], got {shape}")
        return x
