"""Hardware-aware QAT: ``noise_aware(model, CrossbarConfig(...))`` trains with the crossbar's non-idealities in the loop.

In training mode each analog layer (the layers :func:`simulate` would put on crossbars)
sees, afresh at every forward pass (as aihwkit's hardware-aware training does):

- **weight noise**: the fake-quantized weight times ``1 + sigma N(0, 1)`` with
  ``sigma = sqrt(variation^2 + read_noise^2)`` (programming variation and read noise add in
  quadrature). This treats a weight as one conductance; the simulator's bit-sliced cells and
  reference columns spread the same per-cell noise differently, so it is a proxy, not a copy.
- **ADC**: the layer's output rounded to ``2^adc_bits`` levels over the batch's min..max
  (the simulator digitises each tile's partial sums instead), with a straight-through
  gradient (identity backward).

Gradients reach the float shadow weights through the noise (the noise is a constant factor
for each forward). In eval mode nothing is injected, so a trained model evaluates, converts
and goes through :func:`simulate` as a plain quantized model. With no variation, no read
noise and ``adc_bits=None`` the model is the plain fake-quantized model, bit for bit.
Drift and stuck-at faults are not injected (they are inference-time effects here).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ...nn.layers import QuantConv2d, QuantLayer, QuantLinear
from .config import CrossbarConfig
from .simulate import _in_scope, _matches, check_digital

__all__ = ["noise_aware", "weight_noise_sigma", "adc_ste"]

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


class _OutputADC:
    """Forward hook on a layer: its output through an ADC with a straight-through gradient while training."""

    def __init__(self, bits: int | None) -> None:
        self.bits = bits

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        if not module.training or self.bits is None:
            return None
        return adc_ste(output, self.bits)


def noise_aware(model: nn.Module, config: CrossbarConfig, *, digital: Sequence[str] = (), inplace: bool = False) -> nn.Module:
    """A copy of ``model`` whose analog quantized layers train with ``config``'s weight noise and ADC (see module doc)."""
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
        m.weight_quant.register_forward_hook(_WeightNoise(sigma))
        m.register_forward_hook(_OutputADC(config.adc_bits))
        setattr(m, _MARK, True)
        layers[name] = "noise-aware"
    from ...info import attach

    attach(model, "cim_aware", {"weight_sigma": sigma, "adc_bits": config.adc_bits, "layers": layers})
    return model
