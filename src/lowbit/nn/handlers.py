"""The registry that maps module types to the handler that quantizes them (torchao style).

A handler takes ``(module, weight_spec, act_spec)`` and returns the module that
replaces it. Built in: ``nn.Linear`` -> :class:`QuantLinear`, ``nn.Conv1d/2d/3d``
-> :class:`QuantConv1d` / ``2d`` / ``3d`` (grouped, depthwise, strided, dilated),
``nn.ConvTranspose1d/2d/3d`` -> :class:`QuantConvTranspose1d` / ... (per-channel
scales along the weight's output axis 1; with ``groups > 1`` one scale serves the
same output index of every group) — weights, and the input when an activation
spec is given; ``nn.ReLU`` -> :class:`PACT` when the
activation spec has the ``pact`` token. Add more with :func:`register_handler`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import Tensor, nn

from ..formats import Uniform
from ..quantizers import QuantSpec, Quantizer, build_quantizer, parse_spec
from .act import PACT, ActQuant
from .layers import (
    QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose1d, QuantConvTranspose2d, QuantConvTranspose3d, QuantLinear,
)

__all__ = [
    "Handler",
    "register_handler",
    "handler_for",
    "handled_classes",
    "handled_types",
    "weight_quantizer",
    "act_quantizer",
    "is_pact_spec",
]

Handler = Callable[[nn.Module, "str | None", "str | None"], nn.Module]

_HANDLERS: dict[type, Handler] = {}


def register_handler(module_type: type, handler: Handler) -> None:
    """Quantize modules of ``module_type`` (and subclasses) with ``handler(module, weight_spec, act_spec)``."""
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    _HANDLERS[module_type] = handler


def handler_for(module: nn.Module) -> Handler | None:
    """The handler for ``module``'s type (nearest registered base class), or None."""
    for t in type(module).__mro__:
        if t in _HANDLERS:
            return _HANDLERS[t]
    return None


def handled_types() -> list[str]:
    """Names of the module types that have a handler."""
    return sorted(t.__name__ for t in _HANDLERS)


def handled_classes() -> list[type]:
    """The module types that have a handler, in registration order."""
    return list(_HANDLERS)


def is_pact_spec(spec: str | None) -> bool:
    """True for activation specs that ask for PACT (``uint4:pact``)."""
    return spec is not None and "pact" in spec.lower().split(":")


def _pact_bits(spec: str) -> int:
    rest = ":".join(t for t in spec.lower().split(":") if t != "pact")
    p = parse_spec(rest)
    if not (isinstance(p.fmt, Uniform) and not p.fmt.signed and p.granularity == "tensor" and p.range == "minmax"):
        raise ValueError(f"activation spec {spec!r}: PACT needs a plain unsigned format such as 'uint4:pact'")
    return p.bits


def weight_quantizer(spec: "str | QuantSpec", weight: Tensor | None = None) -> Quantizer:
    """A weight quantizer for ``spec``; the ``lsq`` token gives a learned step size initialised from ``weight``."""
    return build_quantizer(spec, init=weight)


def act_quantizer(spec: "str | QuantSpec") -> ActQuant:
    """An input (activation) quantizer for ``spec``."""
    if isinstance(spec, str) and is_pact_spec(spec):
        raise ValueError(f"activation spec {spec!r}: 'pact' applies to ReLU modules, not to a layer's input")
    return ActQuant(build_quantizer(spec))


def _layer_handler(cls: type) -> Handler:
    def handle(mod: nn.Module, wspec: str | None, aspec: str | None) -> nn.Module:
        wq = weight_quantizer(wspec, mod.weight) if wspec else None  # type: ignore[arg-type]
        aq = act_quantizer(aspec) if aspec and not is_pact_spec(aspec) else None
        if wq is None and aq is None:
            return mod
        return cls.from_float(mod, wq, aq)  # type: ignore[attr-defined]

    return handle


def _output_channel_axis(spec: str | None, axis: int) -> str | None:
    """``spec`` with its per-channel scales along ``axis`` (a ConvTranspose's output channels are axis 1)."""
    if not spec:
        return spec
    p = parse_spec(spec)
    if p.granularity != "channel":
        return spec
    return str(dataclasses.replace(p, granularity=f"channel{axis}"))


def _transposed_handler(cls: type) -> Handler:
    plain = _layer_handler(cls)

    def handle(mod: nn.Module, wspec: str | None, aspec: str | None) -> nn.Module:
        return plain(mod, _output_channel_axis(wspec, 1), aspec)

    return handle


def _relu_handler(mod: nn.Module, wspec: str | None, aspec: str | None) -> nn.Module:
    if is_pact_spec(aspec):
        return PACT(_pact_bits(aspec))  # type: ignore[arg-type]
    return mod


register_handler(nn.Linear, _layer_handler(QuantLinear))
register_handler(nn.Conv1d, _layer_handler(QuantConv1d))
register_handler(nn.Conv2d, _layer_handler(QuantConv2d))
register_handler(nn.Conv3d, _layer_handler(QuantConv3d))
register_handler(nn.ConvTranspose1d, _transposed_handler(QuantConvTranspose1d))
register_handler(nn.ConvTranspose2d, _transposed_handler(QuantConvTranspose2d))
register_handler(nn.ConvTranspose3d, _transposed_handler(QuantConvTranspose3d))
register_handler(nn.ReLU, _relu_handler)

# attention, transformer layers, embeddings, RNNs (their modules import this one lazily)
from .attention import mha_handler, out_proj_handler, transformer_handler  # noqa: E402
from .embedding import embedding_handler  # noqa: E402
from .rnn import rnn_handler  # noqa: E402

register_handler(nn.MultiheadAttention, mha_handler)
register_handler(nn.modules.linear.NonDynamicallyQuantizableLinear, out_proj_handler)
for _t in (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder):
    register_handler(_t, transformer_handler)
register_handler(nn.Embedding, embedding_handler)
register_handler(nn.EmbeddingBag, embedding_handler)
register_handler(nn.LSTM, rnn_handler)
register_handler(nn.GRU, rnn_handler)
