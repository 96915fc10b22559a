"""Cross-layer equalization (Nagel et al. 2019): rescale channels so two layers in a ReLU chain share their ranges.

For ``layer1 -> ReLU -> layer2`` (inside an ``nn.Sequential``; max/average pooling,
dropout and identities may sit between them) and ``s > 0``, ``ReLU(x / s) = ReLU(x) / s``:
dividing output channel ``i`` of layer1 (weights and bias) by ``s_i`` and multiplying
input channel ``i`` of layer2 by ``s_i`` leaves the network's function unchanged. With
``r1_i`` the range (max |w|) of layer1's output channel ``i`` and ``r2_i`` that of
layer2's input channel ``i``,

    s_i = (1 / r2_i) * sqrt(r1_i * r2_i)

gives both the range ``sqrt(r1_i r2_i)``: per-tensor grids waste fewer levels on a few
wide channels. Channels with a zero range keep ``s_i = 1``. Run on the float model (after
BatchNorm folding) before any weight scale is fitted.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["equalize", "equalize_pair", "relu_chains"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
# positively homogeneous (f(x / s) = f(x) / s for s > 0) and channel-wise: a scale passes through them
_PASS = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
         nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)


def _channels_in(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels  # type: ignore[return-value]


def _channels_out(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels  # type: ignore[return-value]


def relu_chains(model: nn.Module) -> list[tuple[str, str]]:
    """Pairs ``(layer1, layer2)`` of module names joined by a ReLU (and pass-through modules) in a Sequential."""
    pairs = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for i, (n1, m1) in enumerate(kids):
            if not isinstance(m1, _LAYERS) or getattr(m1, "groups", 1) != 1:
                continue
            j, relu = i + 1, False
            while j < len(kids) and isinstance(kids[j][1], _PASS):
                relu |= isinstance(kids[j][1], (nn.ReLU, nn.LeakyReLU))
                j += 1
            if not relu or j >= len(kids):
                continue
            n2, m2 = kids[j]
            if isinstance(m2, _LAYERS) and getattr(m2, "groups", 1) == 1 and _channels_in(m2) == _channels_out(m1):
                prefix = f"{seq_name}." if seq_name else ""
                pairs.append((prefix + n1, prefix + n2))
    return pairs


def _in_ranges(w: Tensor) -> Tensor:
    return w.detach().abs().transpose(0, 1).reshape(w.shape[1], -1).amax(1)


@torch.no_grad()
def equalize_pair(layer1: nn.Module, layer2: nn.Module) -> Tensor:
    """Equalize one pair in place; return the scales ``s`` (one per channel between them)."""
    w1, w2 = layer1.weight, layer2.weight
    r1 = w1.detach().abs().reshape(w1.shape[0], -1).amax(1)
    r2 = _in_ranges(w2)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 * r2) / torch.where(ok, r2, torch.ones_like(r2)), torch.ones_like(r1))
    shape1 = (-1,) + (1,) * (w1.dim() - 1)
    w1.div_(s.reshape(shape1).to(w1.dtype))
    if getattr(layer1, "bias", None) is not None:
        layer1.bias.div_(s.to(layer1.bias.dtype))
    shape2 = (1, -1) + (1,) * (w2.dim() - 2)
    w2.mul_(s.reshape(shape2).to(w2.dtype))
    return s


def equalize(model: nn.Module, iterations: int = 1) -> list[tuple[str, str]]:
    """Cross-layer equalization of every ReLU chain of ``model``, in place; return the pairs equalized."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    pairs = relu_chains(model)
    for _ in range(iterations):  # a layer in the middle of a chain is rescaled from both sides: repeat to converge
        for a, b in pairs:
            equalize_pair(model.get_submodule(a), model.get_submodule(b))
    return pairs
