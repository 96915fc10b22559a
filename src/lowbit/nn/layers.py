"""Quantized layers: ``QuantLinear``, ``QuantConv1d``, ``QuantConv2d``.

Each is its float counterpart (a subclass: same arguments, same ``weight``) plus

- ``weight_quant``: the weight quantizer; the float ``weight`` is the shadow
  weight the optimizer updates, the forward pass uses ``weight_quant(weight)``,
  computed once per forward call, and the straight-through gradient reaches
  the float weight;
- ``input_quant``: an optional :class:`~lowbit.nn.act.ActQuant` on the input.

``convert_()`` freezes the layer for inference: ``qweight`` holds the
:class:`~lowbit.qtensor.QTensor` (integer codes + scales) and ``weight``
becomes a buffer with exactly ``qweight.dequantize()``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..qtensor import QTensor
from ..quantizer import Quantizer
from .act import ActQuant

__all__ = [
    "QuantLinear", "QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantConvTranspose1d", "QuantConvTranspose2d",
    "QuantConvTranspose3d", "QuantLayer", "is_quant_layer",
]


class QuantLayer:
    """Mixin: a float layer whose forward pass uses a quantized weight."""

    weight: Tensor
    weight_quant: Quantizer | None
    input_quant: ActQuant | None
    qweight: QTensor | None
    weight_spec: str | None

    def _init_quant(self, weight_quant: Quantizer | None, input_quant: ActQuant | None) -> None:
        if weight_quant is not None and not isinstance(weight_quant, Quantizer):
            raise TypeError(f"weight_quant must be a Quantizer or None, got {type(weight_quant).__name__}")
        if input_quant is not None and not isinstance(input_quant, ActQuant):
            raise TypeError(f"input_quant must be an ActQuant or None, got {type(input_quant).__name__}")
        if weight_quant is not None:
            weight_quant.granularity.check(self.weight.shape)
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.qweight = None
        self.weight_spec = weight_quant.spec if weight_quant is not None else None

    @property
    def converted(self) -> bool:
        """True once ``convert_()`` replaced the float weight by integer codes."""
        return self.qweight is not None

    def quantized_weight(self) -> Tensor:
        """The weight the forward pass uses (fake-quantized, or the converted one)."""
        wq = self.weight_quant  # a submodule: one nn.Module attribute lookup, not two (the QAT hot path)
        if wq is None or self.qweight is not None:
            return self.weight
        return wq(self.weight)

    def _quant_input(self, x: Tensor) -> Tensor:
        return self.input_quant(x) if self.input_quant is not None else x

    def encode_weight(self) -> QTensor | None:
        """The weight as a QTensor (integer codes + scales), or None if the weight is not quantized."""
        if self.qweight is not None:
            return self.qweight
        if self.weight_quant is None:
            return None
        return self.weight_quant.encode(self.weight.detach())

    def set_qweight(self, qt: QTensor) -> None:
        """Install integer weights: ``weight`` becomes a buffer equal to ``qt.dequantize()``."""
        if tuple(qt.shape) != tuple(self.weight.shape):
            raise ValueError(f"qweight shape {tuple(qt.shape)} does not match weight shape {tuple(self.weight.shape)}")
        w = qt.dequantize().to(device=self.weight.device, dtype=self.weight.dtype)
        mod: Any = self
        del mod.weight
        mod.register_buffer("weight", w)
        self.qweight = qt
        self.weight_spec = self.weight_spec or qt.fmt.spec
        mod.weight_quant = None

    def convert_(self) -> None:
        """Freeze in place: integer weights (QTensor), fixed activation scales."""
        if self.weight_quant is not None and self.qweight is None:
            q = self.weight_quant
            if not q.frozen:
                q.fit(self.weight.detach())  # the scale the last forward pass used
            self.set_qweight(q.encode(self.weight.detach()))
        if self.input_quant is not None:
            self.input_quant.freeze()

    def _quant_repr(self) -> str:
        parts = []
        if self.weight_spec:
            parts.append(f"weight={self.weight_spec!r}")
        if self.input_quant is not None:
            parts.append(f"input={self.input_quant.spec!r}")
        if self.converted:
            parts.append("converted")
        return ", ".join(parts)


class QuantLinear(nn.Linear, QuantLayer):
    """``nn.Linear`` with a quantized weight and an optional input quantizer."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_quant: Quantizer | None = None,
        input_quant: ActQuant | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_quant(weight_quant, input_quant)

    @classmethod
    def from_float(cls, mod: nn.Linear, weight_quant: Quantizer | None, input_quant: ActQuant | None = None) -> "QuantLinear":
        """A QuantLinear sharing ``mod``'s weight and bias."""
        new = cls(mod.in_features, mod.out_features, mod.bias is not None, device=mod.weight.device, dtype=mod.weight.dtype)
        new.weight, new.bias = mod.weight, mod.bias
        new._init_quant(weight_quant, input_quant)
        return new

    def forward(self, x: Tensor) -> Tensor:
        """Linear map with the quantized weight."""
        return F.linear(self._quant_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


class _QuantConvNd(QuantLayer):
    @classmethod
    def from_float(cls, mod: Any, weight_quant: Quantizer | None, input_quant: ActQuant | None = None) -> Any:
        """A quantized conv sharing ``mod``'s weight and bias."""
        new = cls(  # type: ignore[call-arg]
            mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
            dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None, padding_mode=mod.padding_mode,
            device=mod.weight.device, dtype=mod.weight.dtype,
        )
        new.weight, new.bias = mod.weight, mod.bias
        new._init_quant(weight_quant, input_quant)
        return new

    def forward(self, x: Tensor) -> Tensor:
        """Convolution with the quantized weight."""
        return self._conv_forward(self._quant_input(x), self.quantized_weight(), self.bias)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"  # type: ignore[misc]


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` with a quantized weight and an optional input quantizer."""

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, input_quant: ActQuant | None = None, **kwargs: Any) -> None:
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._init_quant(weight_quant, input_quant)


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` with a quantized weight and an optional input quantizer."""

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, input_quant: ActQuant | None = None, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_quant(weight_quant, input_quant)


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """``nn.Conv3d`` with a quantized weight and an optional input quantizer."""

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, input_quant: ActQuant | None = None, **kwargs: Any) -> None:
        nn.Conv3d.__init__(self, *args, **kwargs)
        self._init_quant(weight_quant, input_quant)


class _QuantConvTransposeNd(QuantLayer):
    """A transposed conv: its weight is ``[in, out/groups, *kernel]``, so per-output-channel scales run along axis 1."""

    _fn: Any

    @classmethod
    def from_float(cls, mod: Any, weight_quant: Quantizer | None, input_quant: ActQuant | None = None) -> Any:
        """A quantized transposed conv sharing ``mod``'s weight and bias."""
        new = cls(  # type: ignore[call-arg]
            mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
            output_padding=mod.output_padding, groups=mod.groups, bias=mod.bias is not None, dilation=mod.dilation,
            padding_mode=mod.padding_mode, device=mod.weight.device, dtype=mod.weight.dtype,
        )
        new.weight, new.bias = mod.weight, mod.bias
        new._init_quant(weight_quant, input_quant)
        return new

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        """Transposed convolution with the quantized weight."""
        m: Any = self
        dims = m.weight.dim() - 2
        pad = m._output_padding(x, output_size, m.stride, m.padding, m.kernel_size, dims, m.dilation)
        return self._fn(self._quant_input(x), self.quantized_weight(), m.bias, m.stride, m.padding, pad, m.groups, m.dilation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"  # type: ignore[misc]


class QuantConvTranspose1d(_QuantConvTransposeNd, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with a quantized weight and an optional input quantizer."""

    _fn = staticmethod(F.conv_transpose1d)

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, input_quant: ActQuant | None = None, **kwargs: Any) -> None:
        nn.ConvTranspose1d.__init__(self, *args, **kwargs)
        self._init_quant(weight_quant, input_quant)


class QuantConvTranspose2d(_QuantConvTransposeNd, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with a quantized weight and an optional input quantizer."""

    _fn = staticmethod(F.conv_transpose2d)

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, input_quant: ActQuant | None = None, **kwargs: Any) -> None:
        nn.ConvTranspose2d.__init__(self, *args, **kwargs)
        self._init_quant(weight_quant, input_quant)


class QuantConvTranspose3d(_QuantConvTransposeNd, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with a quantized weight and an optional input quantizer."""

    _fn = staticmethod(F.conv_transpose3d)

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, input_quant: ActQuant | None = None, **kwargs: Any) -> None:
        nn.ConvTranspose3d.__init__(self, *args, **kwargs)
        self._init_quant(weight_quant, input_quant)


def is_quant_layer(m: nn.Module) -> bool:
    """True for lowbit's quantized layers."""
    return isinstance(m, QuantLayer)
