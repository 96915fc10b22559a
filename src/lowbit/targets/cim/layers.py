"""CrossbarLayer: a quantized Linear / Conv2d whose product runs on simulated crossbar arrays.

The layer's weight ``s_c (a u + b_c)`` (integer code ``u``, format step ``a``, first level
``b_c`` after the zero point, per-column scale ``s_c``) is programmed as ``u - o`` with
``o = (levels - 1) // 2`` (offset binary around the middle code); ``a o + b_c`` times the
sum of the input codes is added digitally. Inputs are unsigned integer codes ``c`` with
value ``s_x (c + b_x)``; they come from the layer's own input quantizer, or from the
PACT module that feeds it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...formats import Uniform
from ...qtensor import QTensor
from ...nn.act import PACT, ActQuant
from ...nn.layers import QuantConv2d, QuantLayer, QuantLinear
from .array import CrossbarArray
from .config import CrossbarConfig

__all__ = ["CrossbarLayer", "weight_grid", "qtensor_grid"]

_GRID_TOL = 1e-3  # how far (in steps) an input may sit from its grid and still count as on it


def weight_grid(layer: QuantLayer) -> tuple[Tensor, int, float, Tensor, Tensor]:
    """The layer's weight as ``(codes [C, K], bits, a, b_c [C], s_c [C])`` with value ``s_c (a codes + b_c)``."""
    qt = layer.encode_weight()
    if qt is None:
        raise ValueError("the layer's weight is not quantized")
    return qtensor_grid(qt)


def qtensor_grid(qt: QTensor) -> tuple[Tensor, int, float, Tensor, Tensor]:
    """A quantized weight as ``(codes [C, K], bits, a, b_c [C], s_c [C])`` with value ``s_c (a codes + b_c)``."""
    g = qt.granularity
    if g.kind == "group" or (g.kind == "channel" and g.axis != 0):
        raise ValueError(f"weight granularity {g.spec!r} is not per tensor or per output channel; a crossbar column needs one scale")
    levels = qt.fmt.levels.double()
    n = levels.numel()
    a = float(levels[-1] - levels[0]) / max(1, n - 1) if n > 1 else 1.0
    grid = levels[0] + a * torch.arange(n, dtype=torch.float64)
    if not torch.allclose(levels, grid, rtol=0, atol=1e-6 * float(levels.abs().max().clamp_min(1))):
        raise ValueError(f"weight format {qt.fmt.spec!r} has unevenly spaced levels; bit-sliced cells need a uniform grid")
    c = qt.shape[0]
    codes = g.from_rows(qt.codes().long(), qt.shape).reshape(c, -1)
    scale = qt.scale.double().expand(c) if qt.scale.numel() == 1 else qt.scale.double()
    zp = torch.zeros(c, dtype=torch.float64) if qt.zero_point is None else qt.zero_point.double().expand(c)
    return codes, max(1, (n - 1).bit_length()), a, float(levels[0]) - zp, scale


class CrossbarLayer(nn.Module):
    """A quantized Linear or Conv2d computed as a crossbar would (see :class:`CrossbarArray`)."""

    w_scale: Tensor
    beta: Tensor
    w_value: Tensor

    def __init__(self, name: str, layer: QuantLayer, source: nn.Module, cfg: CrossbarConfig, *,
                 generator: torch.Generator | None = None, drift_generator: torch.Generator | None = None) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(layer, (QuantLinear, QuantConv2d)):
            raise ValueError(f"layer {name!r} ({type(layer).__name__}): only QuantLinear and QuantConv2d map to a crossbar")
        self.name = name
        self.conv = isinstance(layer, QuantConv2d)
        if self.conv:
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise ValueError(f"layer {name!r}: crossbar convolutions need groups=1, numeric zero padding; keep it digital")
            self.kernel_size, self.stride = layer.kernel_size, layer.stride
            self.padding, self.dilation = layer.padding, layer.dilation
        codes, bits, a, b_col, s_col = weight_grid(layer)
        offset = (2**bits - 1) // 2
        self.a = a
        taps = codes.shape[1] // layer.in_channels if self.conv else 1
        self.array = CrossbarArray(codes.t(), bits, offset, cfg, taps=taps, generator=generator, drift_generator=drift_generator)
        kept = self.array.kept.double()  # rows dropped by drop_remainder contribute nothing, as in the original
        self.register_buffer("kept", kept)
        self.register_buffer("w_scale", s_col)
        self.register_buffer("beta", a * self.array.offset + b_col)  # digital correction per unit of input sum
        self.register_buffer("w_value", s_col[:, None] * (a * codes + b_col[:, None]) * kept)  # [C, K], for b_x != 0
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        if isinstance(source, ActQuant):
            self.input_quant: ActQuant | None = source
            self._pact: tuple[PACT, ...] = ()
        elif isinstance(source, PACT):
            self.input_quant, self._pact = None, (source,)  # not a submodule: it stays where it is in the model
        else:
            raise TypeError(f"source must be an ActQuant or a PACT module, got {type(source).__name__}")

    def extra_repr(self) -> str:
        """Name, tiles, slices, ADC bits and signed scheme."""
        cfg = self.array.cfg
        return (f"{self.name!r}, tiles={self.array.tiles}x{cfg.rows}, slices={self.array.slices}x{cfg.cell_bits}b, "
                f"adc={cfg.adc_bits}, signed={cfg.signed}, adc_input={cfg.adc_input}, transfer={cfg.adc_transfer}")  # fmt: skip

    def _input_codes(self, x: Tensor) -> tuple[Tensor, Tensor, float, int]:
        """Unsigned integer input codes, their step ``s_x``, offset ``b_x`` and bit count."""
        if self._pact:
            p = self._pact[0]
            bits, s, zp, lo = p.bits, (p.alpha.detach() / (2**p.bits - 1)).to(x.dtype), 0.0, 0
        else:
            aq = self.input_quant
            xq = aq(x)  # syncs a moving-average scale before it is read
            q = aq.q
            if not isinstance(q.fmt, Uniform):
                raise ValueError(f"layer {self.name!r}: input format {q.fmt.spec!r} is not an integer grid")
            scale, zpt = q.compute_scale(x)
            if scale.numel() != 1:
                raise ValueError(f"layer {self.name!r}: the input needs one scale per tensor, got {scale.numel()}")
            bits, s, lo = q.fmt.bits, scale.detach().reshape(()).to(x.dtype), q.fmt.qmin
            zp = float(zpt.reshape(())) if zpt is not None and zpt.numel() else 0.0
            x = xq
        v = x.detach() / s + zp - lo
        codes = torch.round(v)
        if codes.numel() and ((v - codes).abs().max() > _GRID_TOL or codes.min() < 0 or codes.max() > 2**bits - 1):
            raise ValueError(
                f"layer {self.name!r}: its input is not on the {bits}-bit grid of step {float(s):.4g}; "
                "keep the layer digital or give it an input quantizer"
            )
        return codes, s, lo - zp, bits

    def _im2col(self, x: Tensor) -> tuple[Tensor, int, int]:
        """Rows ``[N*oh*ow, C*kh*kw]`` in ``F.unfold``'s order, from strided views (faster than im2col here)."""
        (kh, kw), (dh, dw), (ph, pw), (sh, sw) = self.kernel_size, self.dilation, self.padding, self.stride
        xp = F.pad(x, (pw, pw, ph, ph))
        c = xp.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
        n, ch, oh, ow = c.shape[:4]
        return c.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, ch * kh * kw), oh, ow

    def forward(self, x: Tensor) -> Tensor:
        """The layer's output, read out of the crossbar and recombined digitally."""
        codes, s_x, b_x, bits = self._input_codes(x)
        n = x.shape[0]
        if self.conv:
            cols, oh, ow = self._im2col(codes)
        else:
            cols = codes.reshape(-1, codes.shape[-1])
        acc = self.array(cols, bits)  # [M, C], integer units
        y = self.w_scale * (self.a * acc + self.beta * (cols.double() @ self.kept)[:, None])
        if b_x:
            # Inputs carry b_x even where zero padding put a code of 0: count only the real ones.
            if self.conv:
                valid = self._im2col(torch.ones_like(codes[:1]))[0].double()
                y = y + b_x * (valid @ self.w_value.t()).repeat(n, 1)
            else:
                y = y + b_x * self.w_value.sum(1)
        y = (y * s_x.double()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        if self.conv:
            return y.view(n, oh, ow, -1).permute(0, 3, 1, 2)
        return y.reshape(*x.shape[:-1], -1)
