"""Quantized layers: ``QuantLinear``, ``QuantConv1d``, ``QuantConv2d``.

Each is its float counterpart (a subclass: same arguments, same ``weight``) plus

- ``weight_quant``: the weight quantizer; the float ``weight`` is the shadow
  weight the optimizer updates, the forward pass uses ``weight_quant(weight)``,
  computed once per forward call, and the straight-through gradient reaches
  the float weight;
- ``input_quant``: an optional :class:`~lowbit.nn.act.ActQuant` on the input.

``convert_()`` freezes the layer for inference: the float weight is dropped and
the layer holds only the packed codes and scales as buffers (``qweight_codes``,
``qweight_scale``, ``qweight_zero_point``: see :mod:`lowbit.nn.packed`), so
``state_dict()`` and memory are the packed size. ``qweight`` is the
:class:`~lowbit.qtensor.QTensor` over those buffers; ``weight`` still reads as
exactly ``qweight.dequantize()``, computed on access (and once per forward call),
never kept between calls. A kernel chosen by ``lowbit.convert(kernels="auto")``
(:mod:`lowbit.nn.kernels`) may hold its own packed layout instead.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..qtensor import QTensor
from ..quantizer import Quantizer
from . import packed
from .act import ActQuant

__all__ = [
    "QuantLinear", "QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantConvTranspose1d", "QuantConvTranspose2d",
    "QuantConvTranspose3d", "QuantLayer", "is_quant_layer",
]


class QuantLayer:
    """Mixin: a float layer whose forward pass uses a quantized weight."""

    weight_quant: Quantizer | None
    input_quant: ActQuant | None
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
        self._qmeta = None  # packed.PackedMeta once converted
        self.kernel = None  # a kernels.Kernel the forward pass uses, once chosen
        self.weight_spec = weight_quant.spec if weight_quant is not None else None

    # The float weight: a parameter (QAT/PTQ) or, once converted, the packed codes
    # decoded on access. A property (not __getattr__) so that it wins whatever the
    # subclass's base order (nn.Linear's Module.__getattr__ comes before this mixin).
    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The float weight (the shadow parameter, or the converted codes decoded now)."""
        d = self.__dict__
        w = d["_parameters"].get("weight")
        if w is None:
            w = d["_buffers"].get("weight")
        if w is None:
            if d.get("_qmeta") is None:
                raise AttributeError(f"{type(self).__name__} has no weight")
            return packed.dequantize(self)
        return w

    @weight.setter
    def weight(self, value: Tensor) -> None:
        # reached only for values nn.Module.__setattr__ does not register itself
        raise AttributeError(f"{type(self).__name__}.weight is converted (packed codes): install new integer weights with set_qweight()")

    @property
    def qweight(self) -> QTensor | None:
        """The converted weight as a QTensor over the layer's packed buffers, or None before ``convert_()``."""
        return packed.qtensor_of(self) if self.__dict__.get("_qmeta") is not None else None

    @property
    def converted(self) -> bool:
        """True once ``convert_()`` replaced the float weight by integer codes."""
        return self.__dict__.get("_qmeta") is not None

    def quantized_weight(self) -> Tensor:
        """The weight the forward pass uses (fake-quantized, or the converted one decoded now)."""
        if self._qmeta is not None:
            return packed.dequantize(self)
        wq = self.weight_quant  # a submodule: one nn.Module attribute lookup, not two (the QAT hot path)
        if wq is None:
            return self.weight
        return wq(self.weight)

    def _quant_input(self, x: Tensor) -> Tensor:
        return self.input_quant(x) if self.input_quant is not None else x

    def encode_weight(self) -> QTensor | None:
        """The weight as a QTensor (integer codes + scales), or None if the weight is not quantized."""
        if self._qmeta is not None:
            return self.qweight
        if self.weight_quant is None:
            return None
        return self.weight_quant.encode(self.weight.detach())

    def set_qweight(self, qt: QTensor) -> None:
        """Install integer weights: the float weight is dropped, the packed codes and scales become buffers."""
        if not isinstance(qt, QTensor):
            raise TypeError(f"qt must be a QTensor, got {type(qt).__name__}")
        w = self.weight
        if tuple(qt.shape) != tuple(w.shape):
            raise ValueError(f"qweight shape {tuple(qt.shape)} does not match weight shape {tuple(w.shape)}")
        mod: Any = self
        device, dtype = w.device, w.dtype
        if "weight" in self._parameters or "weight" in self._buffers:
            del mod.weight
        del w
        packed.install(self, qt, device=device, dtype=dtype)
        self.weight_spec = self.weight_spec or qt.fmt.spec
        mod.weight_quant = None
        self.kernel = None

    def convert_(self) -> None:
        """Freeze in place: integer weights (packed QTensor buffers), fixed activation scales."""
        if self.weight_quant is not None and self._qmeta is None:
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
            if self.kernel is not None:
                parts.append(f"kernel={self.kernel.name!r}")
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
        if self.kernel is not None:
            return self.kernel(self, self._quant_input(x), self.bias)
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
