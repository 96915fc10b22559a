"""Empirical bias correction: remove the mean output error that quantization adds to each channel.

For each quantized layer, in network order, the mean over the calibration data (batch and
positions) of ``y_quant - y_float`` per output channel is subtracted from the layer's bias.
``y_float`` is the float model's layer output on float inputs, ``y_quant`` the quantized
model's on its own inputs (earlier layers already corrected), so after the pass the mean
output error of every corrected layer is zero on the calibration data. Layers without a
bias are left as they are (adding one would change the saved architecture).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .capture import layer_outputs

__all__ = ["channel_mean", "mean_output_error", "correct_bias"]


def channel_mean(ys: Sequence[Tensor], layer: nn.Module) -> Tensor:
    """Mean of the outputs per output channel (conv: axis 1; linear: the last axis)."""
    axis = -1 if isinstance(layer, nn.Linear) else 1
    total, count = None, 0
    for y in ys:
        yc = y.movedim(axis, -1).reshape(-1, y.shape[axis]).double()
        s = yc.sum(0)
        total = s if total is None else total + s
        count += yc.shape[0]
    if total is None or count == 0:
        raise ValueError("no outputs: bias correction needs calibration batches")
    return (total / count).float()


@torch.no_grad()
def mean_output_error(qmodel: nn.Module, fmodel: nn.Module, name: str, batches: Sequence[Tensor]) -> Tensor:
    """Per-channel mean of (quantized - float) output of layer ``name`` over ``batches``."""
    ql, fl = qmodel.get_submodule(name), fmodel.get_submodule(name)
    return channel_mean(layer_outputs(qmodel, ql, batches), ql) - channel_mean(layer_outputs(fmodel, fl, batches), fl)


@torch.no_grad()
def correct_bias(qmodel: nn.Module, fmodel: nn.Module, names: Sequence[str], batches: Sequence[Tensor]) -> list[str]:
    """Subtract each layer's mean output error from its bias, in the order given; return the layers corrected."""
    done = []
    for name in names:
        layer = qmodel.get_submodule(name)
        if getattr(layer, "bias", None) is None:
            continue
        err = mean_output_error(qmodel, fmodel, name, batches)
        layer.bias.sub_(err.to(layer.bias.dtype))
        done.append(name)
    return done
