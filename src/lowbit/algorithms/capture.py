"""What a layer sees inside a model: the order layers run in, and their inputs / outputs on calibration batches.

The layer-wise PTQ algorithms work in network order on the inputs that the *already
quantized* earlier layers produce: each capture runs the model on the batches and stops
the forward pass at the layer (an exception from its hook), so later layers cost nothing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["run_order", "layer_inputs", "layer_outputs"]


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@torch.no_grad()
def run_order(model: nn.Module, layers: dict[str, nn.Module], example: Tensor) -> list[str]:
    """Names of ``layers`` in the order the forward pass first calls them (layers never called are left out)."""
    order: list[str] = []
    hooks = []
    for name, m in layers.items():
        hooks.append(m.register_forward_pre_hook(lambda mod, args, name=name: None if name in order else order.append(name)))
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    return order


@torch.no_grad()
def layer_inputs(model: nn.Module, layer: nn.Module, batches: Sequence[Tensor], *, quantized: bool = True) -> list[Tensor]:
    """The inputs ``layer`` receives on each batch (after its own input quantizer when ``quantized``)."""
    got: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple[object, ...]) -> None:
        x = args[0]
        assert isinstance(x, Tensor)
        iq = getattr(mod, "input_quant", None)
        got.append((iq(x) if quantized and iq is not None else x).detach())
        raise _Stop

    _run_to(model, batches, layer.register_forward_pre_hook(hook))
    return got


def _run_to(model: nn.Module, batches: Sequence[Tensor], handle: torch.utils.hooks.RemovableHandle) -> None:
    """Run each batch until the hook behind ``handle`` stops it (raises ``_Stop``), then remove the hook."""
    try:
        for b in batches:
            try:
                model(b)
            except _Stop:
                pass
    finally:
        handle.remove()


@torch.no_grad()
def layer_outputs(model: nn.Module, layer: nn.Module, batches: Sequence[Tensor]) -> list[Tensor]:
    """The outputs of ``layer`` on each batch (the forward pass stops there)."""
    got: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple[object, ...], out: object) -> None:
        assert isinstance(out, Tensor)
        got.append(out.detach())
        raise _Stop

    _run_to(model, batches, layer.register_forward_hook(hook))
    return got
