"""``simulate(model, CrossbarConfig(...))``: the model with its quantized layers run on crossbars."""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import asdict
from typing import Sequence

import torch
from torch import nn

from ...nn.act import PACT, ActQuant
from ...nn.layers import QuantConv2d, QuantLayer
from .config import CrossbarConfig
from .layers import CrossbarLayer

__all__ = ["simulate", "crossbar_layers"]

# Modules that keep every value of a PACT output on its grid (registration order = data order).
_DRIFT_SEED = 0x5EED_D1F7  # offset of the drift exponents' seed from the chip's seed

_GRID_KEEPING = (nn.Identity, nn.Flatten, nn.Dropout, nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)


def _matches(pattern: str, name: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def check_digital(digital: Sequence[str], quant: Sequence[str]) -> None:
    """Every pattern of ``digital`` must name at least one quantized layer (a typo would silently keep it analog)."""
    for p in digital:
        if not any(_matches(p, n) for n in quant):
            raise ValueError(f"digital pattern {p!r} matches no quantized layer; quantized layers: {', '.join(quant)}")


def _in_scope(cfg: CrossbarConfig, name: str, m: nn.Module, first_conv: str | None) -> bool:
    """Whether ``cfg.analog`` puts layer ``name`` on a crossbar (TorchInference_RRAM keeps the first conv and FC layers digital)."""
    if cfg.analog == "all":
        return True
    if not isinstance(m, QuantConv2d):
        return False
    if cfg.analog == "convs":
        return name != first_conv
    return m.in_channels >= cfg.rows  # wide_convs: the original's literal Cin >= 128 rule


def _pact_before(mods: list[tuple[str, nn.Module]], i: int) -> PACT | None:
    """The PACT that feeds module ``i`` through grid-keeping modules only, in registration order."""
    for _, m in reversed(mods[:i]):
        if isinstance(m, PACT):
            return m
        if next(m.children(), None) is not None:
            continue  # a container: its children are in the list themselves
        if not isinstance(m, _GRID_KEEPING):
            return None
    return None


def simulate(
    model: nn.Module, config: CrossbarConfig | None = None, *, digital: Sequence[str] = (), inplace: bool = False
) -> nn.Module:
    """Replace each quantized Linear/Conv2d (except those matching ``digital``) by a simulated crossbar layer.

    A crossbar layer needs integer inputs: its own input quantizer, or a PACT module
    right before it (only max-pool, flatten, dropout or identity in between). The
    device draws (variation, faults) come from ``config.seed``, layer after layer.
    ``config.analog`` narrows the analog layers further (``CrossbarConfig.preset("torchinference_rram")``
    keeps the first conv and the Linear layers digital, as the original does).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    cfg = CrossbarConfig() if config is None else config
    if not isinstance(cfg, CrossbarConfig):
        raise TypeError(f"config must be a CrossbarConfig, got {type(cfg).__name__}")
    if isinstance(digital, str):
        digital = (digital,)
    mods = [(n, m) for n, m in model.named_modules() if n]
    quant = [n for n, m in mods if isinstance(m, QuantLayer)]
    if not quant:
        raise ValueError("model has no quantized layers: run lowbit.quantize or lowbit.prepare_qat first")
    check_digital(digital, quant)
    if not inplace:
        model = copy.deepcopy(model)
        mods = [(n, m) for n, m in model.named_modules() if n]
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    drift_gen = torch.Generator().manual_seed(cfg.seed + _DRIFT_SEED)  # its own stream: drift leaves the chip's draws alone
    layers: dict[str, str] = {}
    first_conv = next((n for n, m in mods if isinstance(m, QuantConv2d)), None)
    for i, (name, m) in enumerate(mods):
        if not isinstance(m, QuantLayer):
            continue
        if any(_matches(p, name) for p in digital) or not _in_scope(cfg, name, m, first_conv):
            layers[name] = "digital"
            continue
        source: nn.Module | None = m.input_quant if isinstance(m.input_quant, ActQuant) else _pact_before(mods, i)
        if source is None:
            raise ValueError(
                f"layer {name!r} has integer weights but no integer input (no input quantizer, no PACT before it): "
                f"keep it digital (digital=[{name!r}]) or quantize its input (config 'a:{name}=uint8')"
            )
        new = CrossbarLayer(name, m, source, cfg, generator=gen, drift_generator=drift_gen).to(m.weight.device)  # built on the CPU
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        layers[name] = "crossbar"
    from ...info import attach

    attach(model, "cim", {"config": asdict(cfg), "layers": layers})
    return model


def crossbar_layers(model: nn.Module) -> dict[str, CrossbarLayer]:
    """The simulated crossbar layers of a model returned by :func:`simulate`, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, CrossbarLayer)}
