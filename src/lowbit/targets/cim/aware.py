"""Hardware-aware QAT: ``noise_aware(model, CrossbarConfig(...))`` trains with the crossbar's non-idealities in the loop.

In training mode each analog layer (the layers :func:`simulate` would put on crossbars)
sees, afresh at every forward pass (as aihwkit's hardware-aware training does):

- **weight noise** (``noise="cells"``, the default): the noise the simulator puts on the
  layer, drawn per cell. The weight's integer code is bit-sliced into cells exactly as
  :class:`CrossbarArray` slices it (offset binary with a reference column, or a differential
  pair), every cell conducting ``g_min + level`` gets ``sigma N(0, 1)`` of its own conductance
  (``sigma = sqrt(variation^2 + read_noise^2)``: programming variation and read noise add in
  quadrature), and the noisy conductances are shift-added back into the weight. The reference
  column's noise is one draw per (row, slice), shared by every column, as on the chip. So a
  weight near zero still carries the noise of the offset code's cells, as it does on the
  crossbar; variation is fixed per device after programming, and redrawing it per step trains
  for every chip at once. ``noise="weight"``: the older proxy, the fake-quantized weight times
  ``1 + sigma N(0, 1)`` (a weight treated as one conductance).
- **ADC**: the layer's output rounded to ``2^adc_bits`` levels over the batch's min..max
  (the simulator digitises each tile's partial sums instead), with a straight-through
  gradient (identity backward).

Gradients reach the float shadow weights through the noise (the noise is a constant added
or multiplied for each forward). In eval mode nothing is injected, so a trained model
evaluates, converts and goes through :func:`simulate` as a plain quantized model. With no
variation, no read noise and ``adc_bits=None`` the model is the plain fake-quantized model,
bit for bit. Drift and stuck-at faults are not injected (they are inference-time effects
here); a cell's clip at zero conductance is not modelled (rare at sigma <= 0.3).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ...nn.layers import QuantConv2d, QuantLayer, QuantLinear
from .array import n_slices, slice_codes
from .config import CrossbarConfig
from .layers import qtensor_grid
from .simulate import _in_scope, _matches, check_digital

__all__ = ["noise_aware", "weight_noise_sigma", "adc_ste", "cell_noise", "NOISE_MODELS"]

NOISE_MODELS = ("cells", "weight")

_MARK = "_cim_noise_aware"  # set on each hooked layer: a second noise_aware would stack the noise


def weight_noise_sigma(cfg: CrossbarConfig) -> float:
    """Std of the multiplicative weight noise for training: ``sqrt(variation^2 + read_noise^2)``."""
    return math.hypot(cfg.variation, cfg.read_noise)


def adc_ste(y: Tensor, bits: int) -> Tensor:
    """``y`` rounded to ``2^bits`` uniform levels over its min..max, with an identity (straight-through) gradient."""
    with torch.no_grad():
        lo, hi = y.min(), y.max()
        step = (hi - lo) / (2**bits - 1)
        if float(step) == 0.0:
            return y  # one value: nothing to round
        q = torch.round((y - lo) / step) * step + lo
    return y + (q - y).detach()


class _WeightNoise:
    """Forward hook on a weight quantizer: multiplicative Gaussian noise while training (a class so the model pickles)."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        if not module.training or not self.sigma:
            return None
        return output * (1 + self.sigma * torch.randn_like(output))


def cell_noise(codes: Tensor, bits: int, cfg: CrossbarConfig, generator: torch.Generator | None = None) -> Tensor:
    """One draw of the crossbar's conductance noise on integer weight codes ``[C, K]``, in code units (see module doc)."""
    sigma = weight_noise_sigma(cfg)
    codes = codes.long()
    if not sigma:
        return torch.zeros(codes.shape)
    cb, offset = cfg.cell_bits, (2**bits - 1) // 2
    if cfg.signed == "dummy":
        s = n_slices(bits, cb)
        pos = slice_codes(codes, cb, s).float()  # [S, C, K]
        if cfg.dummy == "midpoint":
            ref = torch.full((s, 1, codes.shape[1]), cfg.cell_levels / 2)
        else:
            ref = slice_codes(torch.full((1, codes.shape[1]), offset), cb, s).float()  # [S, 1, K]: one column per slice
    else:
        d = codes - offset
        s = n_slices(max(offset, 2**bits - 1 - offset).bit_length(), cb)
        pos = slice_codes(d.clamp(min=0), cb, s).float()
        ref = slice_codes((-d).clamp(min=0), cb, s).float()
    weights = (2.0 ** (cb * torch.arange(s, dtype=torch.float32))).view(-1, 1, 1)
    noise = (pos + cfg.g_min) * torch.randn(pos.shape, generator=generator) - (ref + cfg.g_min) * torch.randn(ref.shape, generator=generator)
    return sigma * (weights * noise).sum(0)


class _CellNoise:
    """Forward hook on a weight quantizer: the simulator's per-cell conductance noise while training (a class so it pickles)."""

    def __init__(self, cfg: CrossbarConfig) -> None:
        self.cfg = cfg

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        if not module.training or not weight_noise_sigma(self.cfg):
            return None
        with torch.no_grad():
            codes, bits, a, _, scale = qtensor_grid(module.encode(inputs[0].detach()))  # type: ignore[operator]
            n = cell_noise(codes, bits, self.cfg).to(scale.device, torch.float64)
            noise = (scale[:, None] * a * n).to(output.dtype).view_as(output)
        return output + noise


class _OutputADC:
    """Forward hook on a layer: its output through an ADC with a straight-through gradient while training."""

    def __init__(self, bits: int | None) -> None:
        self.bits = bits

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        if not module.training or self.bits is None:
            return None
        return adc_ste(output, self.bits)


def noise_aware(model: nn.Module, config: CrossbarConfig, *, digital: Sequence[str] = (), inplace: bool = False,
                noise: str = "cells") -> nn.Module:  # fmt: skip
    """A copy of ``model`` whose analog quantized layers train with ``config``'s weight noise and ADC (see module doc)."""
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, CrossbarConfig):
        raise TypeError(f"config must be a CrossbarConfig, got {type(config).__name__}")
    if isinstance(digital, str):
        digital = (digital,)
    mods = [(n, m) for n, m in model.named_modules() if n]
    quant = [n for n, m in mods if isinstance(m, (QuantLinear, QuantConv2d)) and m.weight_quant is not None]
    if not quant:
        raise ValueError("model has no quantized Linear/Conv2d layers: run lowbit.prepare_qat first")
    if any(getattr(m, _MARK, False) for _, m in mods):
        raise ValueError("model is already noise-aware: pass the original model")
    check_digital(digital, quant)
    if not inplace:
        model = copy.deepcopy(model)
        mods = [(n, m) for n, m in model.named_modules() if n]
    sigma = weight_noise_sigma(config)
    first_conv = next((n for n, m in mods if isinstance(m, QuantConv2d)), None)
    layers: dict[str, str] = {}
    for name, m in mods:
        if not isinstance(m, QuantLayer) or name not in quant:
            continue
        if any(_matches(p, name) for p in digital) or not _in_scope(config, name, m, first_conv):
            layers[name] = "digital"
            continue
        assert m.weight_quant is not None
        m.weight_quant.register_forward_hook(_CellNoise(config) if noise == "cells" else _WeightNoise(sigma))
        m.register_forward_hook(_OutputADC(config.adc_bits))
        setattr(m, _MARK, True)
        layers[name] = "noise-aware"
    from ...info import attach

    attach(model, "cim_aware", {"weight_sigma": sigma, "noise": noise, "adc_bits": config.adc_bits, "layers": layers})
    return model
